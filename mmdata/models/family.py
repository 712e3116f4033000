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
from mmdata.text.templates import get_template
from mmdata.text.tokens import IMAGE_TAG


@dataclass(frozen=True)
class ModelFamily:
    """A model family's data-side facts (see the module docstring)."""

    name: str
    rule: str
    template: str
    processor: PatchProcessor | None
    positions: str  # "mrope" (Qwen2-VL 3-D) or "1d"
    hf_model_types: tuple[str, ...] = ()

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The tokens its chat template writes, which a tokenizer for this family must know."""
        t = get_template(self.template)
        return t.needs or (IMAGE_TAG,)

    def get_rule(self) -> Rule:
        """The stored-size and token rule of this family."""
        return get_rule(self.rule)

    @property
    def mrope(self) -> bool:
        """Whether its position ids are Qwen2-VL's 3-D M-RoPE (:func:`mmdata.models.rope.mrope_position_ids`)."""
        return self.positions == "mrope"


FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (
    ModelFamily("qwen2vl", "qwen2vl", "qwen2vl", QWEN2VL_PROCESSOR, "mrope", ("qwen2_vl",)),
    # Qwen2.5-VL: the same image arithmetic, template and (for still images) positions as Qwen2-VL.
    ModelFamily("qwen2_5vl", "qwen2vl", "qwen2vl", QWEN2VL_PROCESSOR, "mrope", ("qwen2_5_vl",)),
    # Qwen-VL (v1): stored 448x448 (256 tokens); the packed loader feeds them through Qwen2-VL's patches.
    ModelFamily("qwen-vl", "qwen-vl", "qwen2vl", QWEN2VL_PROCESSOR, "mrope", ("qwen",)),
    ModelFamily("llava", "llava", "llava_v1", None, "1d", ("llava",)),
    ModelFamily("internvl", "internvl", "qwen2vl", None, "1d", ("internvl_chat",)),
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
