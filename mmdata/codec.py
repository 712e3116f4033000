"""Pixel codecs for the hot paths: DCT-scaled JPEG decode, antialiased bicubic resampling, JPEG encode.

Every function works on HxWx3 uint8 numpy arrays and uses a well-kept library with SIMD:
libjpeg-turbo through ``simplejpeg`` (decode, encode) and ATen's uint8 antialiased bicubic kernel
(``torch``: the Pillow-SIMD resampler ported into PyTorch, the filter Qwen2-VL's processor uses).
Their output depends only on the input and the library versions (``codec_versions``), not on the
CPU's SIMD level or thread count (tested).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["draft_scale", "decode_jpeg_rgb", "decode_jpeg_into", "resize_bicubic", "encode_jpeg", "orient",
           "codec_versions"]

# EXIF orientation -> the array transform that shows the picture upright (Pillow's exif_transpose).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def draft_scale(width: int, height: int, min_width: int, min_height: int) -> int:
    """The JPEG DCT scale (1, 2, 4 or 8) Pillow's ``draft`` picks for a decode of at least min_w x min_h."""
    scale = min(width // max(min_width, 1), height // max(min_height, 1))
    for s in (8, 4, 2):
        if scale >= s:
            return s
    return 1


def decode_jpeg_rgb(data: bytes, size: tuple[int, int], scale: int = 1) -> np.ndarray | None:
    """RGB pixels of a JPEG of ``size`` (w, h) decoded at 1/``scale`` (DCT scaling, sides rounded up);
    None if libjpeg-turbo reports anything, even a recoverable warning (callers then decode with
    Pillow, which decides whether the file is usable). Same pixels as Pillow's draft at that scale."""
    import simplejpeg

    w, h = -(-size[0] // scale), -(-size[1] // scale)
    try:
        a = simplejpeg.decode_jpeg(data, "RGB", min_width=w, min_height=h)
    except ValueError:
        return None
    return a if a.shape[:2] == (h, w) else None


@functools.cache
def _torch() -> Any:
    import torch  # imported on first use: only a shard that re-encodes images pays for it

    return torch


def resize_bicubic(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxWx3 uint8 -> height x width x 3 uint8, antialiased bicubic (a = -0.5, Pillow's BICUBIC
    within 1-2 levels), fixed-point, C-contiguous."""
    torch = _torch()
    if not a.flags.writeable:  # torch.from_numpy wants a writable array; it only reads this one
        a = a.copy()
    src = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # NCHW view, channels-last memory
    out = torch.empty((1, height, width, 3), dtype=torch.uint8)
    torch.ops.aten._upsample_bicubic2d_aa.out(src, [height, width], False, None, None, out=out.permute(0, 3, 1, 2))
    return out[0].numpy()


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to HxWxC pixels, as Pillow's ``ImageOps.exif_transpose``."""
    fn = _ORIENT.get(orientation)
    return a if fn is None else np.ascontiguousarray(fn(a))


def encode_jpeg(a: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG, 4:2:0, accurate DCT, standard Huffman tables, no metadata: fixed settings."""
    import simplejpeg

    return simplejpeg.encode_jpeg(np.ascontiguousarray(a), quality, "RGB", "420")


def codec_versions() -> dict[str, str]:
    """The libraries whose versions fix the bytes of a re-encoded image (read from the installed
    packages' metadata, so asking does not import torch)."""
    from importlib.metadata import version

    return {name: version(name).split("+")[0] for name in ("pillow", "simplejpeg", "torch")}


_DECODABLE = ("YCbCr", "Gray")  # what libjpeg-turbo turns into RGB exactly as Pillow's convert("RGB") does


def decode_jpeg_into(data: bytes, out: np.ndarray) -> bool:
    """Decode a JPEG at full size straight into ``out`` (``[h, w, 3]`` uint8, C-contiguous: e.g. a slice
    of a row's buffer, so no per-image array or copy). False, with ``out`` unspecified, when the data
    is not a YCbCr/grey JPEG of exactly that size or libjpeg-turbo reports anything (callers then
    decode with Pillow). The pixels are Pillow's ``Image.open(...).convert("RGB")`` (tested)."""
    import simplejpeg

    try:
        h, w, space, _ = simplejpeg.decode_jpeg_header(data)
        if (h, w, 3) != out.shape or space not in _DECODABLE:
            return False
        simplejpeg.decode_jpeg(data, "RGB", buffer=out)
    except ValueError:
        return False
    return True
