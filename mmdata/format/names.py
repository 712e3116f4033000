"""File names of a shard folder, defined once (CONTRACT s.3, docs/DESIGN.md "Shard format")."""

from __future__ import annotations

import re

__all__ = ["SHARD_PATTERN", "SHARD_RE", "INDEX", "MANIFEST", "REJECTS", "JOURNAL", "TMP_SUFFIX", "TMP_RE",
           "LOCK", "STAGING", "OUTPUTS", "shard_name", "shard_number", "tmp_name"]

SHARD_PATTERN = "shard-%06d.tar"
SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")
INDEX = "index.parquet"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
JOURNAL = ".shard-journal.jsonl"  # the resume journal; removed once the manifest is written
TMP_SUFFIX = ".tmp"
TMP_RE = re.compile(r"^\.shard-\d{6}\.tar\.tmp$")  # a shard being written
LOCK = ".mmdata-shard.lock"  # held (flock) by a running `mmdata shard` on its --out; removed on exit
STAGING = ".mmdata-staging"  # a run's new output, moved into place only once complete
OUTPUTS = (INDEX, MANIFEST, REJECTS, JOURNAL, LOCK, STAGING)  # the fixed names `mmdata shard` writes (+ shards)


def shard_name(i: int) -> str:
    return SHARD_PATTERN % i


def shard_number(name: str) -> int | None:
    """The number of a ``shard-NNNNNN.tar`` name, else None."""
    return int(name[6:12]) if SHARD_RE.match(name) else None


def tmp_name(name: str) -> str:
    """The name a file is written under before its rename (``.shard-000000.tar.tmp``)."""
    return f".{name}{TMP_SUFFIX}"
