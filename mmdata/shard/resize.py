"""The resizer: one source image -> the bytes stored in a shard, within the token rule's limits.

Per image: probe the header, ask the rule for the stored size, then either keep the original bytes
(``is_passthrough``: a JPEG already at exactly its stored size, RGB or grey, no EXIF rotation) or decode
cheaply (JPEG DCT scaling to the smallest scale at or above the target), resize with antialiased
bicubic, turn upright (EXIF) and encode a JPEG with fixed settings (mmdata.codec: libjpeg-turbo and
ATen's SIMD resampler; the same input and library versions give the same bytes).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmdata import codec

from mmdata.images import DEFAULT_MAX_PIXELS, ImageError, exif_orientation, sniff_format
from mmdata.models.rules import DEFAULT_MAX_IMAGE_TOKENS, MIN_SIDE, Rule, get_rule

__all__ = ["ResizeSpec", "StoredImage", "resize_image", "is_passthrough", "created_with", "to_rgb",
           "over_budget_detail"]

_TRANSPOSED = {5, 6, 7, 8}
# The filter is antialiased bicubic (what Qwen2-VL's image processor uses), after a decode at the
# smallest DCT scale >= the target: >= 40 dB PSNR against an exact full-decode LANCZOS resize
# (benchmarks/bench_shard.py). RESAMPLE is Pillow's name for the same filter (benchmark baselines).
RESAMPLE = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class ResizeSpec:
    """The limits every stored image must meet, and how re-encoded images are written."""

    rule: str = "qwen2vl"
    max_res: int = 448
    max_image_tokens: int = DEFAULT_MAX_IMAGE_TOKENS
    quality: int = 90
    max_pixels: int = DEFAULT_MAX_PIXELS

    def get_rule(self) -> Rule:
        return get_rule(self.rule)


@dataclass(frozen=True)
class StoredImage:
    """What goes into the shard for one image, and the facts the index and the json record."""

    data: bytes
    width: int
    height: int
    orig_width: int
    orig_height: int
    image_tokens: int
    passthrough: bool

    def meta(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "orig_width": self.orig_width,
            "orig_height": self.orig_height,
            "image_tokens": self.image_tokens,
            "passthrough": self.passthrough,
        }


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited over white, CMYK/palette/16-bit grey converted."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: scale to 8 bits (Pillow's plain convert clips at 255).
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        g = np.clip(a * (255.0 / hi) + 0.5, 0, 255).astype("uint8")
        return Image.fromarray(g, "L").convert("RGB")
    if mode == "F":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _open(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageError("unreadable_image", "not an image (unknown file signature)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("unreadable_image", f"decompression bomb: {e}") from None
    except Exception as e:
        raise ImageError("unreadable_image", f"{fmt} does not open: {e or type(e).__name__}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError("unreadable_image", f"decompression bomb: {w}x{h} = {w * h / 1e6:.0f} MP")
    return img, fmt


def over_budget_detail(rule: Rule, w: int, h: int, max_res: int, max_tokens: int) -> str:
    """Why ``rule.fit`` found no size for a w x h image (the rule's own ``why_not``)."""
    return rule.why_not(w, h, max_res, max_tokens)


def is_passthrough(fmt: str, orientation: int, mode: str, stored: tuple[int, int], orig: tuple[int, int]) -> bool:
    """Whether the source is kept byte-identical: a JPEG already at exactly its stored size, RGB or
    grey, with no EXIF rotation to apply."""
    return fmt == "JPEG" and orientation == 1 and mode in ("RGB", "L") and stored == orig


def _check_decodes(img: Image.Image) -> None:
    """A reduced (1/8) decode of a passed-through JPEG: it still reads every entropy-coded byte, so
    a truncated file is caught cheaply."""
    rw, rh = img.size
    img.draft(img.mode, (max(1, rw // 8), max(1, rh // 8)))
    img.load()


def _pixels(data: bytes, img: Image.Image, fmt: str, raw_target: tuple[int, int]) -> np.ndarray:
    """RGB pixels of the source in its raw (unrotated) orientation, JPEGs DCT-scaled to the smallest
    scale >= ``raw_target`` (libjpeg-turbo; Pillow for other formats, CMYK, or what it warns about)."""
    if fmt == "JPEG" and img.mode in ("RGB", "L"):
        scale = codec.draft_scale(*img.size, *raw_target)
        a = codec.decode_jpeg_rgb(data, img.size, scale)
        if a is not None:
            return a
    if fmt == "JPEG":
        img.draft("RGB" if img.mode in ("RGB", "YCbCr") else img.mode, raw_target)
    img.load()
    return np.array(to_rgb(img))


def resize_image(data: bytes, spec: ResizeSpec, rule: Rule | None = None) -> StoredImage:
    """Bring one encoded image within ``spec``; raise ImageError with a shard reject reason.

    Reasons: ``unreadable_image`` (not an image, broken, bomb), ``image_too_small`` (a side below
    28 px before any resize), ``over_token_budget`` (no size within the limits keeps both sides
    >= 28, e.g. a very thin image, or a fixed-cost rule dearer than the budget).
    """
    rule = rule or spec.get_rule()
    img, fmt = _open(data, spec.max_pixels)
    orientation = exif_orientation(img)
    rw, rh = img.size
    ow, oh = (rh, rw) if orientation in _TRANSPOSED else (rw, rh)
    fit = rule.fit(ow, oh, spec.max_res, spec.max_image_tokens)
    if fit is None:
        side = max(ow, oh, MIN_SIDE)
        if min(ow, oh) < MIN_SIDE and rule.fit(side, side, spec.max_res, spec.max_image_tokens):
            # A square of the longer side would fit: it is the short side that is too small.
            raise ImageError("image_too_small", f"{ow}x{oh}: a side is below {MIN_SIDE} px")
        raise ImageError("over_token_budget", over_budget_detail(rule, ow, oh, spec.max_res, spec.max_image_tokens))
    tw, th = fit.width, fit.height
    try:
        if is_passthrough(fmt, orientation, img.mode, (tw, th), (ow, oh)):
            _check_decodes(img)
            return StoredImage(data, ow, oh, ow, oh, fit.tokens, True)
        # Resize in the file's own orientation, then turn the result upright.
        rtw, rth = (th, tw) if orientation in _TRANSPOSED else (tw, th)
        a = _pixels(data, img, fmt, (rtw, rth))
        if a.shape[:2] != (rth, rtw):
            a = codec.resize_bicubic(a, rtw, rth)
        out = codec.encode_jpeg(codec.orient(a, orientation), spec.quality)
    except ImageError:
        raise
    except Exception as e:  # Pillow raises many types for broken data
        raise ImageError("unreadable_image", f"{fmt} does not decode: {e or type(e).__name__}") from None
    return StoredImage(out, tw, th, ow, oh, fit.tokens, False)


def created_with() -> dict[str, str]:
    """The pixel libraries and versions that, with the options, fix the bytes of re-encoded images
    (recorded in the shard options, so a --resume under other versions is refused)."""
    return codec.codec_versions()
