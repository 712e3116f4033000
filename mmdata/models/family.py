"""One ``ModelFamily`` per model family: everything the data side must know about it, in one object.

A family names its stored-size and token rule (``mmdata shard --rule``), its pixel processor (patch
order and normalisation; None where the packed loader cannot emit its pixels), its default chat
template and the special tokens that template writes, and how its position ids are made.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmdata.models.base import Rule
from mmdata.models.patches import QWEN2VL_PROCESSOR, PatchProcessor
from mmdata.models.rules import get_rule
from mmdata.text.tokens import IM_END, IM_START, IMAGE_PAD, IMAGE_TAG, VISION_END, VISION_START


@dataclass(frozen=True)
class ModelFamily:
    """A model family's data-side facts (see the module docstring)."""

    name: str
    rule: str
    template: str
    processor: PatchProcessor | None
    positions: str  # "mrope" (Qwen2-VL 3-D) or "1d"
    special_tokens: tuple[str, ...]
    hf_model_types: tuple[str, ...] = ()

    def get_rule(self) -> Rule:
        """The stored-size and token rule of this family."""
        return get_rule(self.rule)

    @property
    def mrope(self) -> bool:
        """Whether its position ids are Qwen2-VL's 3-D M-RoPE (:func:`mmdata.models.rope.mrope_position_ids`)."""
        return self.positions == "mrope"


_QWEN_TOKENS = (IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (
    ModelFamily("qwen2vl", "qwen2vl", "qwen2vl", QWEN2VL_PROCESSOR, "mrope", _QWEN_TOKENS, ("qwen2_vl",)),
    # Qwen2.5-VL: the same image arithmetic, template and (for still images) positions as Qwen2-VL.
    ModelFamily("qwen2_5vl", "qwen2vl", "qwen2vl", QWEN2VL_PROCESSOR, "mrope", _QWEN_TOKENS, ("qwen2_5_vl",)),
    # Qwen-VL (v1) shards are 448x448-budgeted; the packed loader feeds them through Qwen2-VL's patches.
    ModelFamily("qwen-vl", "qwen-vl", "qwen2vl", QWEN2VL_PROCESSOR, "mrope", _QWEN_TOKENS, ("qwen",)),
    ModelFamily("llava", "llava", "llava_v1", None, "1d", (IMAGE_TAG,), ("llava",)),
    ModelFamily("internvl", "internvl", "qwen2vl", None, "1d", (), ("internvl_chat",)),
)}


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; ValueError lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}") from None


def family_for_rule(rule: str) -> ModelFamily:
    """The first family whose images a ``--rule`` sizes (the shards' manifest records the rule)."""
    for f in FAMILIES.values():
        if f.rule == rule:
            return f
    raise ValueError(f"unknown rule {rule!r}")
