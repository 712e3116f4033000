"""The resume journal (``.shard-journal.jsonl``): a header line, then one line per complete shard.

Each shard line holds the shard's ManifestEntry-like info (name, bytes, sha256), its index rows, its
rejects, passthrough count and the input position after it, so ``--resume`` keeps the verified
complete shards and continues with identical bytes. It needs append + fsync: a local folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

import orjson

from mmdata import storage
from mmdata.format.names import shard_name

__all__ = ["read_journal", "Journal", "sha256_file"]


def sha256_file(path: str | os.PathLike) -> str:
    """Streamed sha256 of a file (what the manifest and --resume compare)."""
    h = hashlib.sha256()
    with storage.open_input(path) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def read_journal(out_dir: Path, path: Path, check_header: Callable[[dict], None]) -> list[dict[str, Any]]:
    """Entries of complete, verified shards (a prefix; a torn or unverified tail is dropped).
    ``check_header`` raises (InputError) when the journal belongs to another run."""
    if not storage.exists(path):
        return []
    lines = storage.read_bytes(path).split(b"\n")
    try:
        first = orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        return []
    check_header(first.get("header") or {})
    entries: list[dict[str, Any]] = []
    for i, raw in enumerate(lines[1:]):
        try:
            e = orjson.loads(raw)
        except orjson.JSONDecodeError:
            break  # a torn last line from a crash
        info = e["shard"]
        p = out_dir / info["name"]
        if info["name"] != shard_name(i) or not storage.exists(p) or storage.size(p) != info["bytes"]:
            break
        if sha256_file(p) != info["sha256"]:
            break
        entries.append(e)
    return entries


class Journal:
    """The open journal: rewritten atomically as header + kept entries, then appended per shard."""

    def __init__(self, path: Path, header: dict[str, Any], entries: list[dict[str, Any]]):
        self.path = path
        with storage.atomic_output(path) as jf:
            jf.write(orjson.dumps({"header": header}) + b"\n")
            for e in entries:
                jf.write(orjson.dumps(e) + b"\n")
        self._f: BinaryIO | None = open(path, "ab")

    def append(self, entry: dict[str, Any]) -> None:
        assert self._f is not None
        self._f.write(orjson.dumps(entry) + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def remove(self) -> None:
        self.close()
        storage.remove(self.path)
