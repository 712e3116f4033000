"""What every visual-token rule shares: the ``Fit`` it returns, the ``Rule`` interface, small arithmetic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Fit:
    """Where an image ends up: stored width/height and the tokens the model spends on it."""

    width: int
    height: int
    tokens: int


class Rule(Protocol):
    """A family's stored-size and token rule (``mmdata shard --rule``)."""

    name: str

    def tokens(self, width: int, height: int, max_tokens: int) -> int: ...

    def fit(self, width: int, height: int, max_res: int, max_tokens: int) -> Fit | None: ...

    def why_not(self, w: int, h: int, max_res: int, max_tokens: int) -> str: ...


def round_by(x: float, f: int) -> int:
    return round(x / f) * f


def scaled(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) times ``scale`` when it shrinks (never upscales), each side at least 1."""
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def least(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """The least x in [lo, hi] with ok(x) (ok monotone), or None."""
    if not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
