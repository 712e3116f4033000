"""Visual-token rules: how big an image is stored and how many tokens the model will spend on it.

Each rule answers two questions behind one small interface:
- ``tokens(width, height, max_tokens)``: the tokens the model's own processor yields for an image
  stored at that size;
- ``fit(width, height, max_res, max_tokens)``: the size to store a source image at (never upscaled,
  aspect kept, longer side <= max_res, tokens <= max_tokens), or None when no such size exists
  (a very thin image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Fit",
    "Rule",
    "RULES",
    "get_rule",
    "smart_resize",
    "Qwen2VLRule",
    "QwenVLRule",
    "LlavaRule",
    "InternVLRule",
    "DEFAULT_MAX_IMAGE_TOKENS",
]

DEFAULT_MAX_IMAGE_TOKENS = 1280
QWEN2VL_FACTOR = 28  # patch 14 x spatial merge 2
QWEN2VL_MIN_PIXELS = 56 * 56
MIN_SIDE = 28
QWEN2VL_MAX_RATIO = 200  # Qwen2-VL's processor refuses images whose long/short side ratio exceeds this


@dataclass(frozen=True)
class Fit:
    """Where an image ends up: stored width/height and the tokens the model spends on it."""

    width: int
    height: int
    tokens: int


class Rule(Protocol):
    name: str

    def tokens(self, width: int, height: int, max_tokens: int) -> int: ...

    def fit(self, width: int, height: int, max_res: int, max_tokens: int) -> Fit | None: ...


def _round_by(x: float, f: int) -> int:
    return round(x / f) * f


def _floor_by(x: float, f: int) -> int:
    return math.floor(x / f) * f


def _ceil_by(x: float, f: int) -> int:
    return math.ceil(x / f) * f


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN2VL_FACTOR,
    min_pixels: int = QWEN2VL_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_IMAGE_TOKENS * 28 * 28,
) -> tuple[int, int]:
    """Qwen2-VL's resize target (qwen_vl_utils form): sides rounded to ``factor``, pixels in range.

    Returns (height, width). Both sides are at least ``factor``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    h_bar = max(factor, _round_by(height, factor))
    w_bar = max(factor, _round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, _floor_by(height / beta, factor))
        w_bar = max(factor, _floor_by(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by(height * beta, factor)
        w_bar = _ceil_by(width * beta, factor)
    return h_bar, w_bar


def _scaled(width: int, height: int, scale: float) -> tuple[int, int]:
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


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
            w, h = _scaled(width, height, scale)
            if min(w, h) < MIN_SIDE or max(w, h) / min(w, h) > QWEN2VL_MAX_RATIO:
                return None
            rounded = max(f, _round_by(h, f)) * max(f, _round_by(w, f))
            if max(w, h) <= max_res and w * h <= max_pixels and rounded <= max_pixels:
                return Fit(w, h, self.tokens(w, h, max_tokens))
            scale *= 0.995
        return None  # pragma: no cover - 400 steps of 0.5% always reach the budget for sane inputs


@dataclass(frozen=True)
class FixedRule:
    """A model that resizes every image to a fixed square: a constant token cost."""

    name: str
    side: int
    cost: int

    def tokens(self, width: int, height: int, max_tokens: int) -> int:
        return self.cost

    def fit(self, width: int, height: int, max_res: int, max_tokens: int) -> Fit | None:
        if self.cost > max_tokens:
            return None
        w, h = _scaled(width, height, min(1.0, max_res / max(width, height)))
        if min(w, h) < 1:
            return None
        return Fit(w, h, self.cost)


def QwenVLRule() -> FixedRule:
    """Qwen-VL (v1): every image becomes 448x448, 256 tokens."""
    return FixedRule("qwen-vl", 448, 256)


def LlavaRule() -> FixedRule:
    """LLaVA-1.5 (CLIP ViT-L/336): every image becomes 336x336, 576 tokens."""
    return FixedRule("llava", 336, 576)


@dataclass(frozen=True)
class InternVLRule:
    """InternVL 1.5/2: dynamic 448 tiles chosen by aspect ratio, plus a thumbnail when tiled.

    Each tile costs 256 tokens (448/14 = 32 patches, pixel-shuffle 0.5 -> 16x16). ``max_tokens``
    sets the tile budget: ``max_num = max_tokens // 256`` tiles including the thumbnail.
    """

    name: str = "internvl"
    image_size: int = 448
    tile_tokens: int = 256
    min_num: int = 1

    def max_num(self, max_tokens: int) -> int:
        budget = max_tokens // self.tile_tokens
        return 1 if budget <= 1 else budget - 1  # one slot for the thumbnail

    def grid(self, width: int, height: int, max_tokens: int) -> tuple[int, int]:
        """InternVL's closest aspect-ratio tiling (columns, rows)."""
        max_num = self.max_num(max_tokens)
        ratios = sorted(
            {(i, j) for n in range(self.min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if self.min_num <= i * j <= max_num},
            key=lambda r: r[0] * r[1],
        )
        aspect = width / height
        best, best_diff = (1, 1), float("inf")
        area = width * height
        for r in ratios:
            diff = abs(aspect - r[0] / r[1])
            if diff < best_diff:
                best_diff, best = diff, r
            elif diff == best_diff and area > 0.5 * self.image_size**2 * r[0] * r[1]:
                best = r
        return best

    def tokens(self, width: int, height: int, max_tokens: int) -> int:
        cols, rows = self.grid(width, height, max_tokens)
        tiles = cols * rows
        return self.tile_tokens * (tiles + (1 if tiles > 1 else 0))

    def fit(self, width: int, height: int, max_res: int, max_tokens: int) -> Fit | None:
        if max_tokens < self.tile_tokens:
            return None
        w, h = _scaled(width, height, min(1.0, max_res / max(width, height)))
        return Fit(w, h, self.tokens(w, h, max_tokens))


RULES = {
    "qwen2vl": Qwen2VLRule,
    "qwen-vl": QwenVLRule,
    "llava": LlavaRule,
    "internvl": InternVLRule,
}


def get_rule(name: str) -> Rule:
    """The rule called ``name``; ValueError lists the known ones."""
    try:
        return RULES[name]()
    except KeyError:
        raise ValueError(f"unknown rule {name!r}; choose one of {', '.join(RULES)}") from None
