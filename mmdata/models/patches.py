"""Qwen2-VL's pixel processor: an RGB image -> ``pixel_values`` rows ``[P, C*T*p*p]`` in Hugging Face's
patch order, and the OpenAI-CLIP normalisation.

Repeat the still image to ``temporal_patch_size`` frames, group the patches by ``merge_size`` x
``merge_size`` windows, each row channel-major ``(C, T, p, p)`` (``Qwen2VLImageProcessor._preprocess``).
Normalisation can run on the host (float32) or later on the device (:func:`normalize_pixels` on uint8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmdata.models.qwen2vl import QWEN2VL_MIN_PIXELS, smart_resize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_PIXELS = QWEN2VL_MIN_PIXELS


@dataclass(frozen=True)
class PatchProcessor:
    """A Qwen2-VL-style patch processor: patch/merge/temporal sizes and the normalisation it applies."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    min_pixels: int = MIN_PIXELS

    @property
    def factor(self) -> int:
        """Side of one merged token in pixels (28 for Qwen2-VL)."""
        return self.patch_size * self.merge_size

    def max_pixels(self, max_tokens: int) -> int:
        """The processor's ``max_pixels`` for a budget of ``max_tokens`` merged tokens per image."""
        return max_tokens * self.factor * self.factor

    def target_size(self, height: int, width: int, max_pixels: int) -> tuple[int, int]:
        """(height, width) the processor resizes a stored ``height x width`` image to."""
        return smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=max_pixels)

    def grid(self, height: int, width: int) -> tuple[int, int, int]:
        """``image_grid_thw`` row of an image at (height, width): (1, h/p, w/p)."""
        return 1, height // self.patch_size, width // self.patch_size


QWEN2VL_PROCESSOR = PatchProcessor()


def target_size(height: int, width: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """(height, width) the Qwen2-VL processor resizes a stored ``height x width`` image to."""
    return smart_resize(height, width, factor=factor, min_pixels=MIN_PIXELS, max_pixels=max_pixels)


def frame_patches(image: np.ndarray, patch_size: int, merge_size: int) -> np.ndarray:
    """``[H, W, C]`` -> one frame's patches ``[P, C, p*p]`` in merge-window order (one copy)."""
    h, w, c = image.shape
    p, m = patch_size, merge_size
    if h % (p * m) or w % (p * m):
        raise ValueError(f"image size {w}x{h} is not a multiple of {p * m}")
    x = image.reshape(h // (p * m), m, p, w // (p * m), m, p, c)
    x = x.transpose(0, 3, 1, 4, 6, 2, 5)  # (gh, gw, m, m, C, p, p)
    return x.reshape(-1, c, p * p)


def repeat_frames(frame: np.ndarray, temporal_patch_size: int) -> np.ndarray:
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
    return repeat_frames(frame_patches(image, patch_size, merge_size), temporal_patch_size)


SCALE = (1.0 / (255.0 * np.asarray(CLIP_STD, dtype=np.float64))).astype(np.float32)
BIAS = (-np.asarray(CLIP_MEAN, dtype=np.float64) / np.asarray(CLIP_STD, dtype=np.float64)).astype(np.float32)


def normalize_frame(frame: np.ndarray) -> np.ndarray:
    """uint8 ``[P, C, p*p]`` -> float32 ``x / 255 / std - mean / std`` per channel (two passes)."""
    out = frame.astype(np.float32)
    out *= SCALE[None, :, None]
    out += BIAS[None, :, None]
    return out


def normalize_numpy(rows: np.ndarray, channels: int = 3) -> np.ndarray:
    """uint8 patch rows ``[P, cols]`` -> float32 CLIP-normalised; channel ``c = column // (cols / 3)``."""
    n, cols = rows.shape
    return normalize_frame(rows.reshape(n, channels, cols // channels)).reshape(n, cols)


def normalize_pixels(t):
    """Device-side normalisation of uint8 ``pixel_values`` (a torch tensor, any device) to float32.

    For ``pixel_dtype="uint8"`` batches: send the 4x smaller uint8 rows, then call this on the device.
    Gives the same values as the loader's own float32 path.
    """
    import torch

    n, cols = t.shape
    scale = torch.as_tensor(SCALE, device=t.device).view(1, 3, 1)
    bias = torch.as_tensor(BIAS, device=t.device).view(1, 3, 1)
    return (t.to(torch.float32).view(n, 3, cols // 3) * scale + bias).view(n, cols)


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
                np.multiply(src, SCALE[None, :, None], out=dst, casting="unsafe")
                dst += BIAS[None, :, None]
            else:
                dst[...] = src
            blk[:, :, 1:, :] = dst[:, :, None, :]
        at += f.shape[0]
    return out.reshape(total, c * temporal_patch_size * pp)


def pixel_values_from_images(images, grid_thw, processor: PatchProcessor = QWEN2VL_PROCESSOR, normalize: bool = True,
                             out=None, host_numpy: bool | None = None):
    """A row's decoded images -> its ``pixel_values``, on whatever device ``images`` is on (a torch op).

    ``images``: uint8, the images' ``[h, w, 3]`` pixels one after another (``pixel_dtype="images"``
    batches, the key ``images``); ``grid_thw``: their ``[N, 3]`` grids in the same order. Returns
    ``[P, C*T*p*p]`` in Hugging Face's patch order: float32 CLIP-normalised (``normalize``), bit-identical
    to the loader's ``pixel_dtype="float32"`` rows, or uint8, identical to its ``"uint8"`` rows. One
    normalise pass and one strided copy per image; ``out`` (e.g. shared memory) receives the result.
    On the CPU (``host_numpy``, the default there) the same arithmetic runs as numpy's
    :func:`frame_patches` + :func:`fill_rows` on views of ``images`` (2x faster than torch's strided
    copy, and no intra-op threads); tested bit-identical to the torch op.
    """
    import torch

    p, m, t = processor.patch_size, processor.merge_size, processor.temporal_patch_size
    grid = [tuple(g) for g in torch.as_tensor(grid_thw).reshape(-1, 3).tolist()]
    n_patch = sum(gh * gw for _, gh, gw in grid)
    dtype = torch.float32 if normalize else torch.uint8
    if out is None:
        out = torch.empty((n_patch, 3 * t * p * p), dtype=dtype, device=images.device)
    if host_numpy if host_numpy is not None else images.device.type == "cpu":
        flat, frames, at = images.numpy(), [], 0
        for _, gh, gw in grid:
            n = gh * p * gw * p * 3
            frames.append(frame_patches(flat[at:at + n].reshape(gh * p, gw * p, 3), p, m))
            at += n
        fill_rows(frames, t, "float32" if normalize else "uint8", out=out.numpy())
        return out
    scale = torch.as_tensor(SCALE, device=images.device)
    bias = torch.as_tensor(BIAS, device=images.device)
    at = row = 0
    for _, gh, gw in grid:
        h, w, n = gh * p, gw * p, gh * gw
        img = images[at:at + h * w * 3].view(h, w, 3)
        if normalize:
            img = img.to(torch.float32).mul_(scale).add_(bias)  # x / 255 / std - mean / std, as the host path
        src = img.view(gh // m, m, p, gw // m, m, p, 3).permute(0, 3, 1, 4, 6, 2, 5)  # (gh', gw', m, m, C, p, p)
        dst = out[row:row + n].view(gh // m, gw // m, m, m, 3, t, p, p)
        dst.copy_(src.unsqueeze(5).expand(-1, -1, -1, -1, -1, t, -1, -1))
        at += h * w * 3
        row += n
    return out
