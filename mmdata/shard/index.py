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



def _schema(with_text_tokens: bool) -> pa.Schema:
    return pa.schema(_SCHEMA + ([("text_tokens", pa.int32())] if with_text_tokens else []))


def to_table(cols: dict[str, list[Any]]) -> pa.Table:
    """Rows (column lists) -> an arrow table with the index schema (compact: ~100 bytes a row)."""
    schema = _schema("text_tokens" in cols)
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)


def write_index(path: str | Path, tables: list[pa.Table], with_text_tokens: bool = False) -> None:
    """Atomically write the index from per-shard tables (combined first, so chunking never changes the bytes)."""
    schema = _schema(with_text_tokens)
    table = pa.concat_tables(tables).combine_chunks() if tables else schema.empty_table()
    with atomic_write(path) as f:
        pq.write_table(table, f, compression="zstd", row_group_size=1 << 20, write_statistics=True)


def read_index(path: str | Path) -> pa.Table:
    return pq.read_table(path)
