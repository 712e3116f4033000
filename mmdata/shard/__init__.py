"""mmdata.shard: cleaned conversations -> deterministic webdataset shards capped to a visual-token budget.

``write_shards(inputs, images_root, out_dir, ...)`` writes ``shard-NNNNNN.tar``, ``index.parquet``,
``manifest.json`` and ``rejects.jsonl`` (format: docs/DESIGN.md "Shard format", docs/shard.md).
"""

from mmdata.shard.resize import ResizeSpec, StoredImage, resize_image
from mmdata.shard.writer import ShardReport, write_shards

__all__ = ["write_shards", "ShardReport", "ResizeSpec", "StoredImage", "resize_image"]
