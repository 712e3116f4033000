"""Packed loader: shards + index -> planned, packed, resumable rows for Qwen2-VL-style training.

``PackedLoader`` (docs/loader.md) follows a seeded epoch plan made from ``index.parquet`` alone;
``load_tokenizer`` comes from the text side (``tokenizer.py``).
"""

from mmdata.loader.dataset import LoaderConfig, PackedLoader
from mmdata.loader.pixels import normalize_pixels


def __getattr__(name):
    if name == "load_tokenizer":
        from mmdata.loader.tokenizer import load_tokenizer

        return load_tokenizer
    raise AttributeError(name)


__all__ = ["LoaderConfig", "PackedLoader", "load_tokenizer", "normalize_pixels"]
