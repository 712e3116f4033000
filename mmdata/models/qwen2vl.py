"""Qwen2-VL / Qwen2.5-VL image arithmetic: ``smart_resize``, the stored-size and token rule.

One token per 28x28 merged patch (patch 14 x spatial merge 2); the processor refuses aspect ratios
over 200. Every other module asks this one (through the rule or the family) instead of redoing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mmdata.models.base import Fit, least, round_by, scaled

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

    def fit(self, width: int, height: int, max_res: int, max_tokens: int) -> Fit | None:
        """Largest stored size (steps of 0.5%) that the processor takes as it is: its sides rounded to
        28 stay within ``max_pixels``, so ``smart_resize`` only rounds and never shrinks again."""
        max_pixels = self.max_pixels(max_tokens)
        f = self.factor
        scale = min(1.0, max_res / max(width, height), math.sqrt(max_pixels / (width * height)))
        for _ in range(400):
            w, h = scaled(width, height, scale)
            if min(w, h) < MIN_SIDE or max(w, h) / min(w, h) > QWEN2VL_MAX_RATIO:
                return None
            rounded = max(f, round_by(h, f)) * max(f, round_by(w, f))
            if max(w, h) <= max_res and w * h <= max_pixels and rounded <= max_pixels:
                return Fit(w, h, self.tokens(w, h, max_tokens))
            scale *= 0.995
        return None  # pragma: no cover - 400 steps of 0.5% always reach the budget for sane inputs

    def why_not(self, w: int, h: int, max_res: int, max_tokens: int) -> str:
        """Why ``fit`` found no size for a w x h image, naming the limit that binds and what would help.

        E.g. "2000x40: at max-res 448 the short side would be 9 px < 28; needs --max-res >= 1400" or
        "9000x40: aspect 225 > 200, which Qwen2-VL's processor refuses".
        """
        size = f"{w}x{h}"
        long, short = max(w, h), min(w, h)
        ratio = long / short
        if ratio > QWEN2VL_MAX_RATIO:
            return f"{size}: aspect {round(ratio, 1):g} > {QWEN2VL_MAX_RATIO}, which Qwen2-VL's processor refuses"
        by_res = max_res / long
        by_tok = math.sqrt(self.max_pixels(max_tokens) / (w * h))
        scale = min(1.0, by_res, by_tok)
        limit = f"at max-res {max_res}" if by_res <= by_tok else f"at --max-image-tokens {max_tokens}"
        why = f"{size}: {limit} the short side would be {short * scale:.0f} px < {MIN_SIDE}"
        # The least --max-res (at an ample budget), then the least budget at that --max-res, that store it.
        full = self.tokens(w, h, 10**9) + 1
        res = least(max_res, max(long, max_res), lambda r: self.fit(w, h, r, max(full, max_tokens)) is not None)
        if res is None:
            return f"{size}: no smaller size keeps both sides >= {MIN_SIDE} and the aspect <= {QWEN2VL_MAX_RATIO}"
        tok = least(max_tokens, max(full, max_tokens), lambda t: self.fit(w, h, res, t) is not None)
        needs = []
        if res > max_res:
            needs.append(f"--max-res >= {res}")
        if tok is not None and tok > max_tokens:
            needs.append(f"--max-image-tokens >= {tok}")
        return why + ("; needs " + " and ".join(needs) if needs else "")
