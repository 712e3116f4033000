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


def patchify(image: np.ndarray, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2) -> np.ndarray:
    """``[H, W, C]`` image -> ``[(H/p)*(W/p), C*T*p*p]`` rows in HF order (dtype kept).

    Equivalent to HF's tile-to-T-frames, reshape ``(1, T, C, H/p/m, m, p, W/p/m, m, p)`` and
    transpose ``(0, 3, 6, 4, 7, 2, 1, 5, 8)``; the frame repeat is done last, on the small axis.
    """
    h, w, c = image.shape
    p, m, t = patch_size, merge_size, temporal_patch_size
    if h % (p * m) or w % (p * m):
        raise ValueError(f"image size {w}x{h} is not a multiple of {p * m}")
    x = image.reshape(h // (p * m), m, p, w // (p * m), m, p, c)
    x = x.transpose(0, 3, 1, 4, 6, 2, 5)  # (gh, gw, m, m, C, p, p)
    x = x.reshape(-1, c, 1, p, p)
    x = np.broadcast_to(x, (x.shape[0], c, t, p, p))
    return np.ascontiguousarray(x).reshape(-1, c * t * p * p)


def _affine(cols: int, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    per = cols // channels
    mean = np.repeat(np.asarray(CLIP_MEAN, dtype=np.float64), per)
    std = np.repeat(np.asarray(CLIP_STD, dtype=np.float64), per)
    return mean, std


def normalize_numpy(rows: np.ndarray) -> np.ndarray:
    """uint8 patch rows -> float32 ``(x / 255 - mean[c]) / std[c]``, channel ``c = column // (cols / 3)``."""
    mean, std = _affine(rows.shape[1])
    out = rows.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    out -= mean.astype(np.float32)
    out /= std.astype(np.float32)
    return out


def normalize_pixels(t):
    """Device-side normalisation of uint8 ``pixel_values`` (a torch tensor, any device) to float32.

    For ``pixel_dtype="uint8"`` batches: send the 4x smaller uint8 rows, then call this on the device.
    Gives the same values as the loader's own float32 path.
    """
    import torch

    mean, std = _affine(t.shape[-1])
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=t.device)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=t.device)
    return (t.to(torch.float32) * (1.0 / 255.0) - mean_t) / std_t


def image_rows(data: bytes, height: int, width: int, patch_size: int, merge_size: int, temporal_patch_size: int,
               pixel_dtype: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image's ``pixel_values`` rows and its ``(t, h, w)`` grid (14-px units)."""
    img = decode_resized(data, height, width)
    rows = patchify(img, patch_size, merge_size, temporal_patch_size)
    if pixel_dtype == "float32":
        rows = normalize_numpy(rows)
    return rows, (1, height // patch_size, width // patch_size)
