"""Pick N samples spread evenly over a data set and read just those (one seek each, via the index)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mmdata import storage
from mmdata.format.sample import SampleError, ShardSample
from mmdata.inspect.dataset import ShardSet, index_batches, resolve
from mmdata.format.tar import HashingReader, RawSample, TarFormatError, group_samples, iter_members, read_sample_at
from mmdata.inspect.verify import _image_members

_COLS = ["key", "shard", "offset", "nbytes"]


@dataclass
class Shown:
    """One picked sample: its record (None if the json is broken), image members, and what went wrong."""

    shard: str
    key: str
    record: dict[str, Any] | None
    images: list[tuple[str, bytes]] = field(default_factory=list)
    error: str | None = None


def _evenly(n: int, total: int) -> list[int]:
    """``n`` positions spread evenly over ``total`` (all of them when n >= total), first one 0."""
    if n <= 0 or total <= 0:
        return []
    if n >= total:
        return list(range(total))
    return sorted({(i * total) // n for i in range(min(n, total))})


def _index_count(s: ShardSet) -> int:
    if s.selected is None:
        assert s.index is not None
        return pq.ParquetFile(s.index).metadata.num_rows
    return sum(b.num_rows for b in index_batches(s, ("shard",)))


def _rows_at(s: ShardSet, positions: list[int]) -> list[dict[str, Any]]:
    """Index rows (key, shard, offset, nbytes) at ``positions``, reading only the row groups holding them."""
    if s.selected is not None:
        rows = [r for b in index_batches(s, tuple(_COLS)) for r in b.to_pylist()]
        return [rows[p] for p in positions]
    assert s.index is not None
    pf = pq.ParquetFile(s.index)
    out: list[dict[str, Any]] = []
    start = 0
    want = list(positions)
    for g in range(pf.metadata.num_row_groups):
        size = pf.metadata.row_group(g).num_rows
        here = [p - start for p in want if start <= p < start + size]
        if here:
            t = pf.read_row_group(g, columns=_COLS)
            out.extend(t.slice(p, 1).to_pylist()[0] for p in here)
        start += size
    return out


def _shown(shard: str, key: str, files: dict[str, bytes]) -> Shown:
    images, _ = _image_members(RawSample(key=key, offset=0, end=0, files=files))
    data = files.get("json")
    if data is None:
        return Shown(shard, key, None, images, "no .json member")
    try:
        return Shown(shard, key, ShardSample.from_json(data).record, images)
    except SampleError as e:
        return Shown(shard, key, None, images, e.detail)


def pick_samples(paths: list[str | Path], n: int) -> list[Shown]:
    """``n`` samples spread evenly over the data set(s); tars without an index give their first ``n``."""
    out: list[Shown] = []
    sets = resolve(paths)
    counts = [_index_count(s) if s.index is not None else n for s in sets]
    total = sum(counts)
    chosen = _evenly(n, total)
    base = 0
    for s, count in zip(sets, counts):
        local = [p - base for p in chosen if base <= p < base + count]
        base += count
        if not local:
            continue
        if s.index is not None:
            for row in _rows_at(s, local):
                path = s.root / row["shard"]
                try:
                    raw = read_sample_at(str(path), int(row["offset"]), int(row["nbytes"]))
                    out.append(_shown(row["shard"], raw.key, raw.files))
                except (OSError, TarFormatError) as e:
                    out.append(Shown(row["shard"], row["key"], None, [], f"cannot read: {e}"))
        else:
            want = set(local)
            pos = 0
            for tar in s.tars:
                if pos > max(want):
                    break
                try:
                    with storage.open_input(tar) as f:
                        for raw in group_samples(iter_members(HashingReader(f, hash_it=False))):
                            if pos in want:
                                out.append(_shown(tar.name, raw.key, raw.files))
                            pos += 1
                            if pos > max(want):
                                break
                except (OSError, TarFormatError) as e:
                    out.append(Shown(tar.name, "-", None, [], f"cannot read: {e}"))
    return out
