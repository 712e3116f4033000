"""Visual-token rules (``mmdata shard --rule``): how big an image is stored, how many tokens it costs.

Each rule answers three questions behind one small interface:
- ``tokens(width, height, max_tokens)``: the tokens the model's own processor yields for an image
  stored at that size;
- ``fit(width, height, max_res, max_tokens)``: the size to store a source image at (never upscaled,
  aspect kept, longer side <= max_res, tokens <= max_tokens), or None when no such size exists
  (a very thin image);
- ``why_not(width, height, max_res, max_tokens)``: when ``fit`` is None, the one-line reason and the
  flag that would help (the shard's ``over_token_budget`` detail).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmdata.models.base import Fit, Rule, scaled
from mmdata.models.qwen2vl import (DEFAULT_MAX_IMAGE_TOKENS, MIN_SIDE, QWEN2VL_MAX_RATIO, Qwen2VLRule,
                                   smart_resize)

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
    "MIN_SIDE",
    "QWEN2VL_MAX_RATIO",
]


def _no_size(w: int, h: int, max_res: int, name: str) -> str:
    return f"{w}x{h}: no size with longer side <= {max_res} keeps the short side >= 1 px under {name}"


@dataclass(frozen=True)
class FixedRule:
    """A model that resizes every image to a fixed square: a constant token cost.

    ``square``: store the square itself (what the processor feeds the model, CONTRACT s.3); otherwise
    the source capped to ``max_res`` (the model's processor, not the loader, squares it).
    """

    name: str
    side: int
    cost: int
    square: bool = False

    def tokens(self, width: int, height: int, max_tokens: int) -> int:
        return self.cost

    def fit(self, width: int, height: int, max_res: int, max_tokens: int) -> Fit | None:
        if self.cost > max_tokens:
            return None
        if self.square:
            return Fit(self.side, self.side, self.cost)
        w, h = scaled(width, height, min(1.0, max_res / max(width, height)))
        if min(w, h) < 1:
            return None
        return Fit(w, h, self.cost)

    def why_not(self, w: int, h: int, max_res: int, max_tokens: int) -> str:
        """Why ``fit`` found no size: the fixed cost is over the budget, or the image is too thin."""
        if self.cost > max_tokens:
            return f"{w}x{h}: {self.name} spends {self.cost} tokens on every image > --max-image-tokens {max_tokens}"
        return _no_size(w, h, max_res, self.name)


def QwenVLRule() -> FixedRule:
    """Qwen-VL (v1): every image becomes 448x448, 256 tokens; stored at 448x448."""
    return FixedRule("qwen-vl", 448, 256, square=True)


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
        w, h = scaled(width, height, min(1.0, max_res / max(width, height)))
        return Fit(w, h, self.tokens(w, h, max_tokens))

    def why_not(self, w: int, h: int, max_res: int, max_tokens: int) -> str:
        """Why ``fit`` found no size: the budget is under one tile."""
        if max_tokens < self.tile_tokens:
            return (f"{w}x{h}: {self.name} needs at least {self.tile_tokens} tokens (one tile) "
                    f"> --max-image-tokens {max_tokens}")
        return _no_size(w, h, max_res, self.name)


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
