"""`mmdata clean`: COCO captions, LLaVA / ShareGPT and messages data -> validated conversation JSON.

Every input record ends in OUT or in the rejects file with a reason code (docs/clean-rules.md).
The exports load on first use, so `mmdata` commands other than clean do not import numpy / Pillow
through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_PROMPTS", "CleanReport", "clean_coco", "clean_llava", "load_prompts"]

_WHERE = {"clean_coco": "coco", "clean_llava": "llava", "DEFAULT_PROMPTS": "prompts", "load_prompts": "prompts",
          "CleanReport": "report"}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'mmdata.clean' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mmdata.clean.{mod}"), name)
    globals()[name] = value
    return value
