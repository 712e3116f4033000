"""Moved to :mod:`mmdata.text.tokenizer` (issue 9: text tools live below the loader); kept so old imports work."""

from mmdata.text.tokenizer import *  # noqa: F401,F403
