"""Packed loader: shards + index -> planned, packed, resumable rows for Qwen2-VL-style training.

``PackedLoader`` (docs/loader.md) follows a seeded epoch plan made from ``index.parquet`` alone;
``load_tokenizer`` and the chat templates are the text side (docs/loader-text.md).

Exports are imported on first use, so torch-free parts (``mmdata.text.pack``, ``.tokenizer``,
``.templates``) can be used by torch-free stages (inspect) without importing torch.
"""

from __future__ import annotations

from mmdata._lazy import lazy_exports

_WHERE = {
    "LoaderConfig": "mmdata.loader.dataset",
    "PackedLoader": "mmdata.loader.dataset",
    "normalize_pixels": "mmdata.loader.pixels",
    "pixel_values_from_images": "mmdata.loader.pixels",
    "load_tokenizer": "mmdata.text.tokenizer",
    "NoSampleFits": "mmdata.loader.plan",
    "mrope_position_ids": "mmdata.loader.rope",
}

__all__ = list(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
