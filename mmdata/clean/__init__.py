"""`mmdata clean`: COCO captions, LLaVA / ShareGPT and messages data -> validated conversation JSON.

Every input record ends in OUT or in the rejects file with a reason code (docs/clean-rules.md).
"""

from mmdata.clean.coco import clean_coco
from mmdata.clean.llava import clean_llava
from mmdata.clean.prompts import DEFAULT_PROMPTS, load_prompts
from mmdata.clean.report import CleanReport

__all__ = ["DEFAULT_PROMPTS", "CleanReport", "clean_coco", "clean_llava", "load_prompts"]
