"""`mmdata clean`: COCO captions, LLaVA / ShareGPT and messages data -> validated conversation JSON.

Every input record ends in OUT or in the rejects file with a reason code (docs/clean-rules.md).
"""

from mmdata.clean.llava import clean_llava
from mmdata.clean.report import CleanReport

__all__ = ["CleanReport", "clean_llava"]
