"""Moved to :mod:`mmdata.models.rules` (issue 9); this name stays so existing imports keep working."""

from mmdata.models.rules import *  # noqa: F401,F403
from mmdata.models.rules import __all__  # noqa: F401
