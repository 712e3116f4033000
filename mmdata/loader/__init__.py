"""Packed loader: shards + index -> planned, packed, resumable rows for Qwen2-VL-style training.

``PackedLoader`` (docs/loader.md) follows a seeded epoch plan made from ``index.parquet`` alone;
``load_tokenizer`` and the chat templates are the text side (docs/loader-text.md).
"""

from mmdata.loader.dataset import LoaderConfig, PackedLoader
from mmdata.loader.pixels import normalize_pixels
from mmdata.loader.tokenizer import load_tokenizer

__all__ = ["LoaderConfig", "PackedLoader", "load_tokenizer", "normalize_pixels"]
