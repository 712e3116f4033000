"""Is a shard folder whole? The one check of a folder's files against its manifest and index: one stat
and one 512-byte read per shard, no decoding. The loader refuses on it before planning, `mmtrain run`
before torch is imported, and `mmtrain doctor` lists every problem it finds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmdata import storage
from mmdata.errors import InputError
from mmdata.format import names
from mmdata.format.tar import TarFormatError, parse_header

__all__ = ["ShardProblem", "IndexRows", "MISSING", "REPLACED", "TRUNCATED", "UNLISTED", "MANIFEST", "INDEX",
           "fix_hint", "shard_problems", "folder_problems", "refuse_first"]

MISSING, REPLACED, TRUNCATED, UNLISTED, MANIFEST, INDEX = "missing", "replaced", "truncated", "unlisted", "manifest", "index"
NOT_FATAL = (TRUNCATED, UNLISTED)  # a truncation is weighed against the bad-sample budget; an extra tar is never read


@dataclass(frozen=True)
class ShardProblem:
    """One thing wrong with a shard folder: the file, what is wrong, its kind, and for a truncated
    shard the index rows past its end."""

    path: str
    what: str
    kind: str
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def fatal(self) -> bool:
        """True when no budget can cover it: the data a run expects is not there."""
        return self.kind not in NOT_FATAL

    def line(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass(frozen=True)
class IndexRows:
    """The index columns the check reads, in index order (shard names by ``shard_idx``)."""

    shards: list[str]
    keys: np.ndarray
    shard_idx: np.ndarray
    offset: np.ndarray
    nbytes: np.ndarray


def fix_hint(root: Path | str) -> str:
    """What to do about a damaged shard folder."""
    return (f"run `mmdata inspect {root} --verify`, then re-shard, or `mmdata shard ... --resume` into the "
            "same --out to rewrite what is damaged")


def refuse_first(problems: list[ShardProblem], root: Path | str) -> None:
    """InputError (one line, exit 2) naming the first fatal problem and the fix; nothing when none is."""
    for p in problems:
        if p.fatal:
            raise InputError(p.path, f"{p.what}: {fix_hint(root)}")


def folder_problems(root: Path | str) -> tuple[list[ShardProblem], dict[str, Any]]:
    """Every problem of a shard folder (manifest, index, each shard), and its manifest ({} if unreadable)."""
    from mmdata.format.index import read_table
    from mmdata.format.manifest import read_manifest

    mpath, ipath = storage.join(root, names.MANIFEST), storage.join(root, names.INDEX)
    try:
        manifest = read_manifest(mpath)
    except InputError as e:
        return [ShardProblem(mpath, e.message, MANIFEST)], {}
    try:
        table = read_table(storage.read_bytes(ipath))
        col = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("key", "shard", "shard_idx", "offset", "nbytes")}
    except FileNotFoundError:
        return [ShardProblem(ipath, "missing: not a shard folder made by `mmdata shard`", INDEX)], manifest
    except Exception as e:  # pyarrow raises several types for a damaged file; KeyError for a lost column
        return [ShardProblem(ipath, f"cannot read: {e}", INDEX)], manifest
    shard_idx = col["shard_idx"].astype(np.int64)
    shards = [""] * (int(shard_idx.max()) + 1 if len(shard_idx) else 0)
    for i, name in zip(shard_idx.tolist(), col["shard"].tolist()):
        shards[i] = name
    rows = IndexRows(shards, col["key"], shard_idx, col["offset"].astype(np.int64), col["nbytes"].astype(np.int64))
    return shard_problems(root, manifest, rows), manifest


def shard_problems(root: Path | str, manifest: dict[str, Any], rows: IndexRows) -> list[ShardProblem]:
    """Every problem of the folder's files against ``manifest`` and the index ``rows``: a missing
    manifest, index rows the manifest does not count, a shard missing, replaced (another shard's
    bytes, a size over the manifest's, no header where a sample starts), truncated, or unlisted."""
    from mmdata.format.manifest import FORMAT

    mpath = storage.join(root, names.MANIFEST)
    probs: list[ShardProblem] = []
    if not manifest:
        probs.append(ShardProblem(mpath, "missing: not a complete shard folder made by `mmdata shard`", MANIFEST))
    elif manifest.get("format") != FORMAT:
        probs.append(ShardProblem(mpath, "not an mmdata shard manifest", MANIFEST))
    elif isinstance(manifest.get("samples"), int) and manifest["samples"] != len(rows.keys):
        probs.append(ShardProblem(storage.join(root, names.INDEX), f"{len(rows.keys)} rows, manifest.json says "
                                                                  f"{manifest['samples']} samples", INDEX))
    listed = {s.get("name"): s for s in manifest.get("shards", []) if isinstance(s, dict)}
    probs += _indexed_shard_problems(root, listed, rows)
    probs += _other_shard_problems(root, listed, set(rows.shards))
    return probs


def _indexed_shard_problems(root: Path | str, listed: dict, rows: IndexRows) -> list[ShardProblem]:
    """Problems of the shards the index puts samples in."""
    bounds = np.searchsorted(rows.shard_idx, np.arange(len(rows.shards) + 1))
    probs: list[ShardProblem] = []
    for s, (size, got) in enumerate(_shard_facts(root, rows, bounds)):
        name = rows.shards[s]
        mine = np.arange(bounds[s], bounds[s + 1])
        if not name or len(mine) == 0:
            continue
        path = storage.join(root, name)
        want = listed.get(name, {}).get("bytes")
        key, first = str(rows.keys[mine[0]]), int(rows.offset[mine[0]])
        cut = mine[rows.offset[mine] + rows.nbytes[mine] > (size or 0)]
        if size is None:
            probs.append(ShardProblem(path, f"shard file is missing (index.parquet lists {len(mine)} samples in it)", MISSING))
        elif isinstance(want, int) and size > want:
            probs.append(ShardProblem(path, f"{size} bytes, manifest.json says {want}: not the shard the index "
                                            "describes", REPLACED))
        elif got is not None and got.rsplit("/", 1)[-1].split(".", 1)[0] != key:
            probs.append(ShardProblem(path, f"holds {got!r} where index.parquet puts {key}.json: replaced by "
                                            "another shard's bytes", REPLACED))
        elif got is None and len(cut) < len(mine):
            probs.append(ShardProblem(path, f"no tar header at byte {first} where index.parquet puts {key}.json",
                                      REPLACED))
        elif len(cut) or (isinstance(want, int) and size < want):
            said = f", manifest.json says {want}" if isinstance(want, int) else ""
            probs.append(ShardProblem(path, f"{size} bytes{said}: truncated, {len(cut)} sample(s) past its end",
                                      TRUNCATED, cut))
    return probs


def _other_shard_problems(root: Path | str, listed: dict, indexed: set[str]) -> list[ShardProblem]:
    """Shards the manifest lists but the index puts no sample in (present, at their size), and
    shard files the manifest does not list."""
    probs: list[ShardProblem] = []
    for name, s in listed.items():
        if name in indexed:
            continue
        path = storage.join(root, name)
        try:
            size = storage.size(path)
        except FileNotFoundError:
            probs.append(ShardProblem(path, "listed in manifest.json but missing", MISSING))
            continue
        if isinstance(s.get("bytes"), int) and size != s["bytes"]:
            probs.append(ShardProblem(path, f"{size} bytes, manifest.json says {s['bytes']}", REPLACED))
    if listed:
        try:
            extra = sorted(n for n in storage.listdir(root) if names.SHARD_RE.match(n) and n not in listed)
        except OSError:
            extra = []
        if extra:
            probs.append(ShardProblem(str(root), f"{len(extra)} shard(s) not in manifest.json, e.g. {extra[0]}", UNLISTED))
    return probs


def _first_member_name(path: str, offset: int) -> str | None:
    """Name of the member whose header is at ``offset`` (None if no valid header is there)."""
    try:
        hdr = storage.read_range(path, offset, 512)
        return parse_header(hdr, offset).name if len(hdr) == 512 and hdr.count(0) != 512 else None
    except TarFormatError:
        return None


def _shard_facts(root: Path | str, rows: IndexRows, bounds: np.ndarray) -> list[tuple[int | None, str | None]]:
    """Per shard: (size, or None when missing; name of the member at its first row's offset). One
    stat and one 512-byte read each, 32 shards at a time on remote storage (a round trip each)."""

    def one(s: int) -> tuple[int | None, str | None]:
        name = rows.shards[s]
        if not name or bounds[s] == bounds[s + 1]:
            return None, None
        path = storage.join(root, name)
        try:
            size = storage.size(path)
        except FileNotFoundError:
            return None, None
        first = int(rows.offset[bounds[s]])
        return size, (_first_member_name(path, first) if first < size else None)

    shards = range(len(rows.shards))
    if not storage.is_remote(root):
        return [one(s) for s in shards]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(one, shards))
