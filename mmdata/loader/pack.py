"""Moved to :mod:`mmdata.text.pack` (issue 9: text tools live below the loader); kept so old imports work."""

from mmdata.text.pack import *  # noqa: F401,F403
