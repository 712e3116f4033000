"""mmdata.shard: cleaned conversations -> deterministic webdataset shards capped to a visual-token budget.

``write_shards(inputs, images_root, out_dir, ...)`` writes ``shard-NNNNNN.tar``, ``index.parquet``,
``manifest.json`` and ``rejects.jsonl`` (format: docs/DESIGN.md "Shard format", docs/shard.md).
Exports are imported on first use, so ``mmdata --help`` does not load pyarrow and Pillow.
"""

from __future__ import annotations

from mmdata._lazy import lazy_exports

_WHERE = {
    "write_shards": "mmdata.shard.writer",
    "ShardReport": "mmdata.shard.writer",
    "ResizeSpec": "mmdata.shard.resize",
    "StoredImage": "mmdata.shard.resize",
    "resize_image": "mmdata.shard.resize",
}

__all__ = list(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
