"""index.parquet: one row per sample, enough to plan packing without opening a shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmdata.io import atomic_write

__all__ = ["COLUMNS", "IndexColumns", "write_index", "read_index"]

_SCHEMA = [
    ("key", pa.string()),
    ("shard", pa.string()),
    ("shard_idx", pa.int32()),
    ("offset", pa.int64()),
    ("nbytes", pa.int64()),
    ("id", pa.string()),
    ("n_images", pa.int16()),
    ("image_tokens", pa.int32()),
    ("image_tokens_list", pa.list_(pa.int32())),
    ("widths", pa.list_(pa.int32())),
    ("heights", pa.list_(pa.int32())),
    ("text_chars", pa.int32()),
    ("n_turns", pa.int16()),
    ("source", pa.string()),
]
COLUMNS = [n for n, _ in _SCHEMA] + ["text_tokens"]


class IndexColumns(dict):
    """Column name -> list of values, appended row by row (cheap; converted once at the end)."""

    def __init__(self, with_text_tokens: bool = False):
        super().__init__({n: [] for n, _ in _SCHEMA})
        if with_text_tokens:
            self["text_tokens"] = []

    def extend(self, other: dict[str, list[Any]]) -> None:
        for k, v in self.items():
            v.extend(other[k])

    def __len__(self) -> int:  # type: ignore[override]
        return len(self["key"])

    def slice(self, start: int) -> dict[str, list[Any]]:
        return {k: v[start:] for k, v in self.items()}


def to_table(cols: dict[str, list[Any]]) -> pa.Table:
    schema = list(_SCHEMA)
    if "text_tokens" in cols:
        schema.append(("text_tokens", pa.int32()))
    return pa.table({n: pa.array(cols[n], type=t) for n, t in schema}, schema=pa.schema(schema))


def write_index(path: str | Path, cols: dict[str, list[Any]]) -> None:
    """Atomically write the index (fixed writer settings, so the same rows give the same bytes)."""
    table = to_table(cols)
    with atomic_write(path) as f:
        pq.write_table(table, f, compression="zstd", row_group_size=1 << 20, write_statistics=True)


def read_index(path: str | Path) -> pa.Table:
    return pq.read_table(path)
