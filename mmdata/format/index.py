"""index.parquet: one row per sample, enough to plan packing without opening a shard. The schema
(columns and types), the writer and the reader are defined here once."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmdata import storage

__all__ = ["SCHEMA", "COLUMNS", "REQUIRED", "IndexColumns", "schema", "to_table", "write_index", "read_table"]

SCHEMA: list[tuple[str, pa.DataType]] = [
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
TEXT_TOKENS = ("text_tokens", pa.int32())  # present when the writer pre-tokenised (--tokenizer)
COLUMNS = [n for n, _ in SCHEMA] + [TEXT_TOKENS[0]]
REQUIRED = ("key", "shard", "shard_idx", "offset", "nbytes", "n_images", "image_tokens")  # what the loader needs


class IndexColumns(dict):
    """Column name -> list of values, appended row by row (cheap; converted once per shard)."""

    def __init__(self, with_text_tokens: bool = False):
        super().__init__({n: [] for n, _ in SCHEMA})
        if with_text_tokens:
            self[TEXT_TOKENS[0]] = []


def schema(with_text_tokens: bool) -> pa.Schema:
    return pa.schema(SCHEMA + ([TEXT_TOKENS] if with_text_tokens else []))


def to_table(cols: dict[str, list[Any]]) -> pa.Table:
    """Rows (column lists) -> an arrow table with the index schema (compact: ~100 bytes a row)."""
    sch = schema(TEXT_TOKENS[0] in cols)
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in sch}, schema=sch)


def write_index(path: str | os.PathLike, tables: list[pa.Table], with_text_tokens: bool = False) -> None:
    """Atomically write the index from per-shard tables (combined first, so chunking never changes the bytes)."""
    sch = schema(with_text_tokens)
    table = pa.concat_tables(tables).combine_chunks() if tables else sch.empty_table()
    with storage.atomic_output(path) as f:
        pq.write_table(table, f, compression="zstd", row_group_size=1 << 20, write_statistics=True)


def read_table(data: bytes) -> pa.Table:
    """The whole index from its bytes (the caller hashes the same bytes: one read)."""
    return pq.read_table(pa.BufferReader(data))
