"""File names of a shard folder, defined once (CONTRACT s.3, docs/DESIGN.md "Shard format")."""

from __future__ import annotations

import re

__all__ = ["SHARD_PATTERN", "SHARD_RE", "INDEX", "MANIFEST", "REJECTS", "JOURNAL", "TMP_SUFFIX", "TMP_RE",
           "LOCK", "STAGING", "OUTPUTS", "STAGE_RUN", "STAGE_MOVING", "OLD_DONE_RE", "shard_name",
           "shard_number", "tmp_name", "part_name", "done_name"]

SHARD_PATTERN = "shard-%06d.tar"
SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")
INDEX = "index.parquet"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
JOURNAL = ".shard-journal.jsonl"  # the resume journal of the layout before manifest version 2 (removed if found)
TMP_SUFFIX = ".tmp"
TMP_RE = re.compile(r"^\.shard-\d{6}\.tar\.tmp$")  # a shard being written
LOCK = ".mmdata-shard.lock"  # held by a running `mmdata shard` on its --out (flock; s3: a lease); removed on exit
STAGING = ".mmdata-staging"  # a run's new output, moved into place only once complete
STAGE_RUN = "run.json"  # in STAGING: the run's options and input sha256 (what --resume compares)
STAGE_MOVING = "moving"  # in STAGING: every job is done and the parts are being moved to their final names
OLD_DONE_RE = re.compile(r"^\.shard-\d{6}\.done\.json$")  # done-records of the old --records-per-shard layout
# The fixed names `mmdata shard` writes (+ shards); a run clears them. Not LOCK: the running writer holds it
# while it clears the folder (removing it would let a second writer in; hold_lock refuses a non-lock file).
OUTPUTS = (INDEX, MANIFEST, REJECTS, JOURNAL, STAGING)


def shard_name(i: int) -> str:
    return SHARD_PATTERN % i


def shard_number(name: str) -> int | None:
    """The number of a ``shard-NNNNNN.tar`` name, else None."""
    return int(name[6:12]) if SHARD_RE.match(name) else None


def tmp_name(name: str) -> str:
    """The name a file is written under before its rename (``.shard-000000.tar.tmp``)."""
    return f".{name}{TMP_SUFFIX}"


def part_name(job: int, part: int) -> str:
    """A job's part in STAGING (``job-000003.part-000001.tar``); renamed to ``shard-NNNNNN.tar`` at the end."""
    return f"job-{job:06d}.part-{part:06d}.tar"


def done_name(job: int) -> str:
    """A job's done-record in STAGING (``job-000003.done.json``)."""
    return f"job-{job:06d}.done.json"
