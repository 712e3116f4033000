"""manifest.json: the options, counts and per-shard sha256 of a shard set (no timestamps, no paths)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from mmdata import __version__, storage
from mmdata.errors import InputError
from mmdata.io import read_json

__all__ = ["FORMAT", "VERSION", "ShardInfo", "build_manifest", "write_manifest", "read_manifest"]

FORMAT = "mmdata.shards"
VERSION = 2  # 2: one layout, jobs of N input records, keys = record positions (docs/shard.md "Layout")


@dataclass
class ShardInfo:
    """One complete shard file."""

    name: str
    samples: int
    bytes: int
    sha256: str
    first_key: str
    last_key: str


def build_manifest(options: dict[str, Any], shards: list[ShardInfo], samples: int, rejected: int,
                   image_tokens: int, reasons: dict[str, int], passthrough: int, images: int,
                   input_sha256: list[str] | None = None) -> dict[str, Any]:
    """The manifest; ``input_sha256`` (per input file, in order) lets --resume recognise a finished run."""
    out: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created_by": f"mmdata {__version__}",
        "options": options,
    }
    if input_sha256 is not None:
        out["input_sha256"] = input_sha256
    return out | {
        "samples": samples,
        "rejected": rejected,
        "image_tokens": image_tokens,
        "images": images,
        "passthrough_images": passthrough,
        "reject_reasons": dict(sorted(reasons.items())),
        "shards": [asdict(s) for s in shards],
    }


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Atomically write the manifest (indented, trailing newline)."""
    with storage.atomic_output(path) as f:
        f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest as a dict; InputError (one line) if it is missing, unreadable or not an object
    with a ``shards`` list of named entries."""
    m = read_json(path)
    if not isinstance(m, dict) or not isinstance(m.get("shards"), list):
        raise InputError(path, "not an mmdata shard manifest (expected an object with a 'shards' list)")
    for i, s in enumerate(m["shards"]):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise InputError(path, f"manifest shard entry {i} has no 'name'")
    return m
