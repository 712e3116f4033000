"""Image bytes -> the loader's uint8 patch frames and the batch's ``pixel_values`` rows.

Decode with PIL at the stored size (shards store exactly the size the processor feeds the model,
CONTRACT s.3, so nothing is resized here: the pixels are the processor's on the stored file), then the
family's patch order and normalisation (:mod:`mmdata.models.patches`). ``fill_rows`` normalises straight
into the batch buffer.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mmdata import codec
from mmdata.models.patches import (BIAS, CLIP_MEAN, CLIP_STD, MIN_PIXELS, SCALE, frame_patches,  # noqa: F401
                                   fill_rows, normalize_frame, normalize_numpy, normalize_pixels, patchify,
                                   pixel_values_from_images, repeat_frames, target_size)


def decode_into(data: bytes, out: np.ndarray) -> None:
    """Decode image bytes into ``out`` (RGB uint8 ``[height, width, 3]``, e.g. a slice of the row's
    image buffer) as the processor's PIL path does (``convert("RGB")``): libjpeg-turbo straight into the
    buffer for a plain JPEG (the same pixels), Pillow otherwise. ValueError when the image is not
    ``width x height`` (never resized)."""
    if codec.decode_jpeg_into(data, out):
        return
    height, width = out.shape[:2]
    with Image.open(io.BytesIO(data)) as im:
        if im.size != (width, height):
            raise ValueError(f"the image is {im.size[0]}x{im.size[1]}, the json says {width}x{height}")
        out[...] = np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_exact(data: bytes, height: int, width: int) -> np.ndarray:
    """Decode image bytes to RGB uint8 ``[height, width, 3]`` (:func:`decode_into` a new array)."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    decode_into(data, out)
    return out


def decode_frame(data: bytes, height: int, width: int, patch_size: int = 14, merge_size: int = 2) -> np.ndarray:
    """Image bytes -> one uint8 frame of patches ``[P, C, p*p]`` at the exact size (see :func:`fill_rows`)."""
    return frame_patches(decode_exact(data, height, width), patch_size, merge_size)


def image_rows(data: bytes, height: int, width: int, patch_size: int, merge_size: int, temporal_patch_size: int,
               pixel_dtype: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image's ``pixel_values`` rows and its ``(t, h, w)`` grid (14-px units)."""
    frame = frame_patches(decode_exact(data, height, width), patch_size, merge_size)
    if pixel_dtype == "float32":
        frame = normalize_frame(frame)  # normalise one frame, then repeat: half the float work
    return repeat_frames(frame, temporal_patch_size), (1, height // patch_size, width // patch_size)
