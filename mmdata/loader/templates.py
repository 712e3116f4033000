"""Moved to :mod:`mmdata.text.templates` (issue 9: text tools live below the loader); kept so old imports work."""

from mmdata.text.templates import *  # noqa: F401,F403
