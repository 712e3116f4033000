"""mmdata.format: the shard format in one place (docs/DESIGN.md "Shard format").

``names`` (file names), ``tar`` (deterministic writing + the one strict reader), ``index`` (the
index.parquet schema, writer, reader), ``manifest`` (manifest.json), ``sample`` (the typed
``ShardSample`` json), ``journal`` (``sha256_file``) and ``writer`` (``sample_members``, a sample's tar members). Every file is
opened through ``mmdata.storage``. Exports load on first use.
"""

from __future__ import annotations

from mmdata._lazy import lazy_exports

_WHERE = {
    "sample_members": "mmdata.format.writer",
    "ShardSample": "mmdata.format.sample",
    "ImageMeta": "mmdata.format.sample",
    "SampleError": "mmdata.format.sample",
    "ShardInfo": "mmdata.format.manifest",
    "read_manifest": "mmdata.format.manifest",
    "write_manifest": "mmdata.format.manifest",
    "TarFormatError": "mmdata.format.tar",
}

__all__ = list(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
