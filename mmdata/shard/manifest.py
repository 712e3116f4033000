"""manifest.json: the options, counts and per-shard sha256 of a shard set (no timestamps, no paths)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmdata import __version__
from mmdata.io import read_json, write_json

__all__ = ["ShardInfo", "build_manifest", "write_manifest", "read_manifest"]

FORMAT = "mmdata.shards"
VERSION = 1


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


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    write_json(path, manifest, indent=True)


def read_manifest(path: str | Path) -> dict[str, Any]:
    return read_json(path)
