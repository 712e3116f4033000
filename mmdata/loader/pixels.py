"""Image bytes -> Qwen2-VL ``pixel_values`` rows ``[P, C*T*p*p]`` in Hugging Face's patch order.

Decode with PIL (JPEG draft mode: DCT-domain downscale when the target is at most half the stored
size), resize bicubic to the rule's exact size, repeat the still image to ``temporal_patch_size``
frames, group the patches by ``merge_size`` x ``merge_size`` windows, each row channel-major
``(C, T, p, p)`` (``Qwen2VLImageProcessor._preprocess``). Normalisation with the OpenAI-CLIP
mean/std can run here (float32) or later on the device (:func:`normalize_pixels` on uint8 rows).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mmdata.rules import smart_resize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_PIXELS = 56 * 56


def target_size(height: int, width: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """(height, width) the Qwen2-VL processor resizes a stored ``height x width`` image to."""
    return smart_resize(height, width, factor=factor, min_pixels=MIN_PIXELS, max_pixels=max_pixels)


def decode_resized(data: bytes, height: int, width: int) -> np.ndarray:
    """Decode image bytes to RGB uint8 ``[height, width, 3]`` (bicubic; JPEG draft when it is exact)."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            im.draft("RGB", (width, height))  # only ever picks a scale >= the requested size
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def _frame_patches(image: np.ndarray, patch_size: int, merge_size: int) -> np.ndarray:
    """``[H, W, C]`` -> one frame's patches ``[P, C, p*p]`` in merge-window order (one copy)."""
    h, w, c = image.shape
    p, m = patch_size, merge_size
    if h % (p * m) or w % (p * m):
        raise ValueError(f"image size {w}x{h} is not a multiple of {p * m}")
    x = image.reshape(h // (p * m), m, p, w // (p * m), m, p, c)
    x = x.transpose(0, 3, 1, 4, 6, 2, 5)  # (gh, gw, m, m, C, p, p)
    return x.reshape(-1, c, p * p)


def _repeat_frames(frame: np.ndarray, temporal_patch_size: int) -> np.ndarray:
    """``[P, C, p*p]`` -> ``[P, C*T*p*p]``: the still image repeated to T frames inside each channel."""
    n, c, pp = frame.shape
    out = np.empty((n, c, temporal_patch_size, pp), dtype=frame.dtype)
    out[...] = frame[:, :, None, :]
    return out.reshape(n, c * temporal_patch_size * pp)


def patchify(image: np.ndarray, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2) -> np.ndarray:
    """``[H, W, C]`` image -> ``[(H/p)*(W/p), C*T*p*p]`` rows in HF order (dtype kept).

    Equivalent to HF's tile-to-T-frames, reshape ``(1, T, C, H/p/m, m, p, W/p/m, m, p)`` and
    transpose ``(0, 3, 6, 4, 7, 2, 1, 5, 8)``; the frame repeat is done last, on the small axis.
    """
    return _repeat_frames(_frame_patches(image, patch_size, merge_size), temporal_patch_size)


_SCALE = (1.0 / (255.0 * np.asarray(CLIP_STD, dtype=np.float64))).astype(np.float32)
_BIAS = (-np.asarray(CLIP_MEAN, dtype=np.float64) / np.asarray(CLIP_STD, dtype=np.float64)).astype(np.float32)


def _normalize_frame(frame: np.ndarray) -> np.ndarray:
    """uint8 ``[P, C, p*p]`` -> float32 ``x / 255 / std - mean / std`` per channel (two passes)."""
    out = frame.astype(np.float32)
    out *= _SCALE[None, :, None]
    out += _BIAS[None, :, None]
    return out


def normalize_numpy(rows: np.ndarray, channels: int = 3) -> np.ndarray:
    """uint8 patch rows ``[P, cols]`` -> float32 CLIP-normalised; channel ``c = column // (cols / 3)``."""
    n, cols = rows.shape
    return _normalize_frame(rows.reshape(n, channels, cols // channels)).reshape(n, cols)


def normalize_pixels(t):
    """Device-side normalisation of uint8 ``pixel_values`` (a torch tensor, any device) to float32.

    For ``pixel_dtype="uint8"`` batches: send the 4x smaller uint8 rows, then call this on the device.
    Gives the same values as the loader's own float32 path.
    """
    import torch

    n, cols = t.shape
    scale = torch.as_tensor(_SCALE, device=t.device).view(1, 3, 1)
    bias = torch.as_tensor(_BIAS, device=t.device).view(1, 3, 1)
    return (t.to(torch.float32).view(n, 3, cols // 3) * scale + bias).view(n, cols)


def decode_frame(data: bytes, height: int, width: int, patch_size: int = 14, merge_size: int = 2) -> np.ndarray:
    """Image bytes -> one uint8 frame of patches ``[P, C, p*p]`` at the exact size (see :func:`fill_rows`)."""
    return _frame_patches(decode_resized(data, height, width), patch_size, merge_size)


def fill_rows(frames: list[np.ndarray], temporal_patch_size: int, pixel_dtype: str,
              out: np.ndarray | None = None) -> np.ndarray:
    """uint8 frames ``[P_i, C, p*p]`` -> one ``pixel_values`` array ``[sum P_i, C*T*p*p]``, normalised
    (float32) straight into the output (``out`` if given, e.g. a shared-memory tensor's buffer): no
    per-image float temporaries, no concatenation copy."""
    total = sum(f.shape[0] for f in frames)
    c, pp = (frames[0].shape[1], frames[0].shape[2]) if frames else (3, 196)
    dtype = np.float32 if pixel_dtype == "float32" else np.uint8
    if out is None:
        out = np.empty((total, c, temporal_patch_size, pp), dtype=dtype)
    out = out.reshape(total, c, temporal_patch_size, pp)
    at = 0
    step = 256  # patches per block: normalise and repeat while the block is still in cache
    for f in frames:
        for a in range(0, f.shape[0], step):
            src = f[a:a + step]
            blk = out[at + a:at + a + src.shape[0]]
            dst = blk[:, :, 0, :]
            if dtype is np.float32:
                np.multiply(src, _SCALE[None, :, None], out=dst, casting="unsafe")
                dst += _BIAS[None, :, None]
            else:
                dst[...] = src
            blk[:, :, 1:, :] = dst[:, :, None, :]
        at += f.shape[0]
    return out.reshape(total, c * temporal_patch_size * pp)


def image_rows(data: bytes, height: int, width: int, patch_size: int, merge_size: int, temporal_patch_size: int,
               pixel_dtype: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image's ``pixel_values`` rows and its ``(t, h, w)`` grid (14-px units)."""
    frame = _frame_patches(decode_resized(data, height, width), patch_size, merge_size)
    if pixel_dtype == "float32":
        frame = _normalize_frame(frame)  # normalise one frame, then repeat: half the float work
    return _repeat_frames(frame, temporal_patch_size), (1, height // patch_size, width // patch_size)
