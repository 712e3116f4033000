"""`--freeze vision|merger|llm`: which parts of the model train (LLaVA / MindSpeed-MM stage 1 trains the merger
only), the log line saying what remains trainable, and the accelerator's peak memory for the log."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from mmdata.errors import InputError

if TYPE_CHECKING:
    from torch import nn

PARTS = ("vision", "merger", "llm")


def part_of(name: str) -> str:
    """The part a parameter belongs to: the ViT (patch embedding and blocks), the merger, or the decoder."""
    if name.startswith("visual.merger"):
        return "merger"
    if name.startswith("visual."):
        return "vision"
    return "llm"


def parse_freeze(values: Iterable[str] | None) -> tuple[str, ...]:
    """`--freeze` values (repeated and/or comma separated) -> the parts, checked."""
    parts: list[str] = []
    for v in values or ():
        for p in str(v).split(","):
            p = p.strip().lower()
            if not p:
                continue
            if p not in PARTS:
                raise InputError(None, f"--freeze takes {', '.join(PARTS)} (comma separated or repeated), got {p!r}")
            if p not in parts:
                parts.append(p)
    if len(parts) == len(PARTS):
        raise InputError(None, "--freeze vision,merger,llm leaves nothing to train")
    return tuple(parts)


def apply_freeze(model: nn.Module, parts: Iterable[str]) -> str:
    """Turn off the gradients of the frozen parts; returns the log line with what remains trainable."""
    frozen = set(parts)
    counts = {p: [0, 0] for p in PARTS}  # part -> [trainable, total]
    seen: set[int] = set()
    for name, p in model.named_parameters():
        part = part_of(name)
        p.requires_grad_(part not in frozen)
        if id(p) in seen:
            continue
        seen.add(id(p))
        counts[part][1] += p.numel()
        counts[part][0] += p.numel() if p.requires_grad else 0
    train = sum(c[0] for c in counts.values())
    total = sum(c[1] for c in counts.values())
    each = ", ".join(f"{p} {c[0] / 1e6:.2f}M/{c[1] / 1e6:.2f}M" for p, c in counts.items())
    what = f"frozen: {', '.join(sorted(frozen))}" if frozen else "nothing frozen"
    return f"trainable parameters: {train / 1e6:.2f}M of {total / 1e6:.2f}M ({each}; {what})"


def peak_memory_note(kind: str) -> str:
    """' | peak allocated: X GiB' on cuda / npu (reset after each read, so it is per log interval); '' on cpu."""
    import torch

    mod = getattr(torch, kind, None) if kind in ("cuda", "npu") else None
    if mod is None or not hasattr(mod, "max_memory_allocated"):
        return ""
    peak = mod.max_memory_allocated() / 2**30
    mod.reset_peak_memory_stats()
    return f" | peak allocated: {peak:.2f} GiB"
