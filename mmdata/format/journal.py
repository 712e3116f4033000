"""``sha256_file``: the streamed sha256 of an input or shard (what the manifest and --resume compare).

(This module held the resume journal of the layout before manifest version 2; ``--resume`` now trusts
the jobs' done-records in the staging folder, ``mmdata.shard.planned``.)
"""

from __future__ import annotations

import hashlib
import os
from mmdata import storage

__all__ = ["sha256_file"]


def sha256_file(path: str | os.PathLike) -> str:
    """Streamed sha256 of a file (what the manifest and --resume compare)."""
    h = hashlib.sha256()
    with storage.open_input(path) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
