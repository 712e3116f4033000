"""Moved to :mod:`mmdata.models.rope` (issue 9: a family's position ids live with the family); kept so old imports work."""

from mmdata.models.rope import *  # noqa: F401,F403
