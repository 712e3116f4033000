"""Packed loader: shards + index -> planned, packed, resumable rows for Qwen2-VL-style training.

``PackedLoader`` (docs/loader.md) follows a seeded epoch plan made from ``index.parquet`` alone;
``load_tokenizer`` and the chat templates are the text side (docs/loader-text.md).

Exports are imported on first use, so torch-free parts (``mmdata.loader.pack``, ``.tokenizer``,
``.templates``) can be used by torch-free stages (inspect) without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "LoaderConfig": "mmdata.loader.dataset",
    "PackedLoader": "mmdata.loader.dataset",
    "normalize_pixels": "mmdata.loader.pixels",
    "load_tokenizer": "mmdata.loader.tokenizer",
    "NoSampleFits": "mmdata.loader.plan",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mmdata.loader' has no attribute {name!r}")
