"""Qwen2-VL / Qwen2.5-VL image arithmetic: ``smart_resize``, the stored-size and token rule.

One token per 28x28 merged patch (patch 14 x spatial merge 2); the processor refuses aspect ratios
over 200. Every other module asks this one (through the rule or the family) instead of redoing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mmdata.models.base import Fit, least, round_by, scaled  # noqa: F401

DEFAULT_MAX_IMAGE_TOKENS = 1280  # the default visual-token budget per image (shard, inspect, loader)
QWEN2VL_FACTOR = 28  # patch 14 x spatial merge 2
QWEN2VL_MIN_PIXELS = 56 * 56
MIN_SIDE = 28
QWEN2VL_MAX_RATIO = 200  # Qwen2-VL's processor refuses images whose long/short side ratio exceeds this


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN2VL_FACTOR,
    min_pixels: int = QWEN2VL_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_IMAGE_TOKENS * QWEN2VL_FACTOR * QWEN2VL_FACTOR,
) -> tuple[int, int]:
    """Qwen2-VL's resize target (qwen_vl_utils form): sides rounded to ``factor``, pixels in range.

    Returns (height, width). Both sides are at least ``factor``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    h_bar = max(factor, round_by(height, factor))
    w_bar = max(factor, round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class Qwen2VLRule:
    """Qwen2-VL / Qwen2.5-VL: dynamic resolution, one token per 28x28 merged patch."""

    name: str = "qwen2vl"
    factor: int = QWEN2VL_FACTOR
    min_pixels: int = QWEN2VL_MIN_PIXELS

    def max_pixels(self, max_tokens: int) -> int:
        return max_tokens * self.factor * self.factor

    def model_size(self, width: int, height: int, max_tokens: int) -> tuple[int, int]:
        """(width, height) the model's processor resizes a stored image to."""
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels(max_tokens))
        return w, h

    def tokens(self, width: int, height: int, max_tokens: int) -> int:
        w, h = self.model_size(width, height, max_tokens)
        return (w // self.factor) * (h // self.factor)

    def takes_as_is(self, width: int, height: int, max_tokens: int) -> bool:
        """Whether the processor feeds a ``width x height`` image to the model unchanged (no resize)."""
        return (self.model_size(width, height, max_tokens) == (width, height)
                and max(width, height) / min(width, height) <= QWEN2VL_MAX_RATIO)

    def fit(self, width: int, height: int, max_res: int, max_tokens: int) -> Fit | None:
        """The size the processor feeds the model (CONTRACT s.3): ``smart_resize`` of the source after
        the ``max_res`` cap (never upscaled by the cap; enlarged to ``min_pixels`` as the processor
        does). None when a side is under ``MIN_SIDE``, the aspect is over 200 (the processor refuses
        it) or even the smallest size the processor makes costs more than ``max_tokens``."""
        if min(width, height) < MIN_SIDE or max(width, height) / min(width, height) > QWEN2VL_MAX_RATIO:
            return None
        w, h = scaled(width, height, min(1.0, max_res / max(width, height)))
        w, h = self.model_size(w, h, max_tokens)
        if not self.takes_as_is(w, h, max_tokens) or w * h > self.max_pixels(max_tokens):
            return None
        return Fit(w, h, (w // self.factor) * (h // self.factor))

    def why_not(self, w: int, h: int, max_res: int, max_tokens: int) -> str:
        """Why ``fit`` found no size for a w x h image, naming the limit that binds and what would help.

        E.g. "9000x40: aspect 225 > 200, which Qwen2-VL's processor refuses" or "5600x28: at max-res
        10000 Qwen2-VL's processor holds a side at 28 px and the image costs more than
        --max-image-tokens 64; needs --max-image-tokens >= 198".
        """
        size = f"{w}x{h}"
        long, short = max(w, h), min(w, h)
        if long / short > QWEN2VL_MAX_RATIO:
            return f"{size}: aspect {round(long / short, 1):g} > {QWEN2VL_MAX_RATIO}, which Qwen2-VL's processor refuses"
        if short < MIN_SIDE:
            return f"{size}: a side is below {MIN_SIDE} px"
        need = least(max_tokens, max_tokens + self.tokens(w, h, 10**9),
                     lambda t: self.fit(w, h, max_res, t) is not None)
        return (f"{size}: at max-res {max_res} Qwen2-VL's processor holds a side at {MIN_SIDE} px and the "
                f"image costs more than --max-image-tokens {max_tokens}"
                + (f"; needs --max-image-tokens >= {need}" if need else ""))
