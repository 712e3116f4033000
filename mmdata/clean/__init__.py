"""`mmdata clean`: COCO captions, LLaVA / ShareGPT and messages data, parquet with embedded images ->
validated conversation JSON.

Every input record ends in OUT or in the rejects file with a reason code (docs/clean-rules.md).
The exports load on first use, so `mmdata` commands other than clean do not import numpy / Pillow
through this package.
"""

from __future__ import annotations

from mmdata._lazy import lazy_exports

__all__ = ["DEFAULT_PROMPTS", "CleanReport", "clean_coco", "clean_hf", "clean_llava", "load_prompts"]

_WHERE = {"clean_coco": "mmdata.clean.sources.coco", "clean_llava": "mmdata.clean.sources.llava",
          "clean_hf": "mmdata.clean.sources.hf", "DEFAULT_PROMPTS": "mmdata.clean.prompts",
          "load_prompts": "mmdata.clean.prompts", "CleanReport": "mmdata.clean.report"}

__getattr__ = lazy_exports(__name__, _WHERE)
