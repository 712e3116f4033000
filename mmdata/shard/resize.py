"""The resizer: one source image -> the bytes stored in a shard, within the token rule's limits.

Per image: probe the header, ask the rule for the stored size, then either keep the original bytes
(a JPEG already within every limit: RGB or grey, no EXIF rotation) or decode cheaply (JPEG DCT
scaling to the smallest scale at or above the target), orient, convert to RGB, resize with a
high-quality filter and encode a JPEG with fixed settings (the same input gives the same bytes).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from mmdata.images import DEFAULT_MAX_PIXELS, ImageError, exif_orientation, sniff_format
from mmdata.models.rules import DEFAULT_MAX_IMAGE_TOKENS, MIN_SIDE, Rule, get_rule

__all__ = ["ResizeSpec", "StoredImage", "resize_image", "to_rgb", "over_budget_detail"]

_TRANSPOSED = {5, 6, 7, 8}
# Draft to a DCT scale that leaves at least this much oversampling before the final filter:
# 1.0 = the smallest scale >= target (fastest). The final filter is Pillow's antialiased bicubic
# (what Qwen2-VL's own image processor uses): ~25% cheaper than LANCZOS and, after the DCT-scaled
# decode, >= 42 dB PSNR against an exact full-decode LANCZOS resize (benchmarks/bench_shard.py).
DRAFT_MARGIN = 1.0
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
        import numpy as np

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
        if fmt == "JPEG" and orientation == 1 and img.mode in ("RGB", "L") and (tw, th) == (ow, oh):
            # Already within every limit: keep the original bytes. A reduced decode still reads
            # every entropy-coded byte, so a truncated file is caught cheaply.
            img.draft(img.mode, (max(1, rw // 8), max(1, rh // 8)))
            img.load()
            return StoredImage(data, ow, oh, ow, oh, fit.tokens, True)
        if fmt == "JPEG":
            # Target in the file's own (unrotated) orientation; DCT-scale to the smallest scale >= it.
            rtw, rth = (th, tw) if orientation in _TRANSPOSED else (tw, th)
            m = DRAFT_MARGIN
            img.draft("RGB" if img.mode in ("RGB", "YCbCr") else img.mode, (int(rtw * m), int(rth * m)))
        img.load()
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
        if img.size != (tw, th):
            img = img.resize((tw, th), RESAMPLE)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=spec.quality, subsampling=2, optimize=False, progressive=False)
    except ImageError:
        raise
    except Exception as e:  # Pillow raises many types for broken data
        raise ImageError("unreadable_image", f"{fmt} does not decode: {e or type(e).__name__}") from None
    return StoredImage(out.getvalue(), tw, th, ow, oh, fit.tokens, False)
