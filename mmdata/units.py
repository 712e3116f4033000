"""Byte sizes as users write them on the command line (--max-shard-bytes, --cache-limit)."""

from __future__ import annotations

import re

from mmdata.errors import InputError

__all__ = ["parse_size"]

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str, flag: str = "--max-shard-bytes") -> int:
    """'1GB' -> 10**9, '512MiB' -> 2**29, '1e9' -> 10**9; InputError naming ``flag`` on anything else."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise InputError(None, f"{flag}: cannot read {text!r} (use e.g. 1GB, 500MB, 512MiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[unit])
