"""Model families (issue 9): one ``ModelFamily`` per family (qwen2vl, qwen2_5vl, internvl, llava,
qwen-vl) bundling its stored-size/token rule (``rules``, ``qwen2vl``), pixel processor (``patches``),
chat template, special tokens and position ids (``rope``). Torch-free; only this package knows a
family's arithmetic."""

from __future__ import annotations

from mmdata._lazy import lazy_exports

_WHERE = {
    "ModelFamily": "mmdata.models.family",
    "FAMILIES": "mmdata.models.family",
    "get_family": "mmdata.models.family",
    "family_for_rule": "mmdata.models.family",
    "get_rule": "mmdata.models.rules",
    "RULES": "mmdata.models.rules",
    "Fit": "mmdata.models.base",
    "Rule": "mmdata.models.base",
    "smart_resize": "mmdata.models.qwen2vl",
    "DEFAULT_MAX_IMAGE_TOKENS": "mmdata.models.qwen2vl",
    "mrope_position_ids": "mmdata.models.rope",
}

__all__ = list(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
