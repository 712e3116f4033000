"""Find what the user pointed at: shard folders (manifest + index + tars) or tars given one by one.

The summary reads only ``manifest.json`` and ``index.parquet`` (columns it needs, streamed in record
batches), so it costs the same for 10 or 10,000 shards. Tars with no index beside them are scanned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson
import pyarrow as pa

from mmdata import storage
from mmdata.errors import InputError
from mmdata.format import names
from mmdata.format.manifest import read_manifest

INDEX = names.INDEX
MANIFEST = names.MANIFEST
IMAGE_TAG = "<image>"

# Index columns the summary reads (DESIGN.md "Shard format"); missing optional ones are skipped.
INDEX_COLUMNS = ("key", "shard", "id", "n_images", "image_tokens", "image_tokens_list", "widths", "heights",
                 "text_chars", "n_turns", "source", "text_tokens", "offset", "nbytes")


@dataclass
class ShardSet:
    """One data set folder, or the chosen tars of one folder (``selected``: their file names)."""

    root: Path
    manifest: dict[str, Any] | None
    index: Path | None
    tars: list[Path]
    selected: list[str] | None = None
    extra: list[str] = field(default_factory=list)  # tars on disk the manifest does not list

    @property
    def label(self) -> str:
        return str(self.root) if self.selected is None else ", ".join(str(self.root / s) for s in self.selected)

    def manifest_shards(self) -> dict[str, dict[str, Any]]:
        """Manifest entries by shard name (only the selected ones when tars were given)."""
        if not self.manifest:
            return {}
        out = {s["name"]: s for s in self.manifest.get("shards", [])}
        if self.selected is not None:
            out = {k: v for k, v in out.items() if k in self.selected}
        return out


def is_file(path: str | Path) -> bool:
    """An existing file (not a folder), through the storage seam."""
    return storage.exists(path) and not storage.isdir(path)


def _tars_in(root: Path) -> list[str]:
    """``*.tar`` names in ``root`` (hidden names, e.g. a shard being written, excluded), sorted."""
    return [n for n in storage.listdir(root) if n.endswith(".tar") and not n.startswith(".")]


def _open_folder(root: Path) -> ShardSet:
    mpath, ipath = root / MANIFEST, root / INDEX
    manifest = read_manifest(mpath) if is_file(mpath) else None
    on_disk = _tars_in(root)
    if manifest is not None:
        names = [s["name"] for s in manifest["shards"]]
        listed = set(names)
        extra = [n for n in on_disk if n not in listed]
    else:
        names, extra = on_disk, []
    if manifest is None and not names:
        raise InputError(root, "no shards here (no manifest.json and no .tar files)")
    return ShardSet(root=root, manifest=manifest, index=ipath if is_file(ipath) else None,
                    tars=[root / n for n in names], extra=extra)


def resolve(paths: list[str | Path]) -> list[ShardSet]:
    """Shard sets for the given folders and tars; tars of one folder are grouped into one set."""
    if not paths:
        raise InputError(None, "give a shard folder or one or more .tar files")
    sets: list[ShardSet] = []
    by_parent: dict[Path, ShardSet] = {}
    for p in map(Path, paths):
        if p.name in (MANIFEST, INDEX) and is_file(p):
            p = p.parent  # `inspect out/manifest.json` means the data set
        if storage.isdir(p):
            sets.append(_open_folder(p))
        elif storage.exists(p):
            parent = p.parent
            s = by_parent.get(parent)
            if s is None:
                mpath, ipath = parent / MANIFEST, parent / INDEX
                manifest = read_manifest(mpath) if is_file(mpath) else None
                s = ShardSet(root=parent, manifest=manifest, index=ipath if is_file(ipath) else None,
                             tars=[], selected=[])
                by_parent[parent] = s
                sets.append(s)
            if p.name not in s.selected:
                s.selected.append(p.name)
                s.tars.append(p)
        else:
            raise InputError(p, "no such file or directory")
    for s in sets:
        if s.selected is not None and s.index is not None and s.manifest is not None:
            listed = {x["name"] for x in s.manifest["shards"]}
            if any(n not in listed for n in s.selected):
                s.index = None  # a tar the index does not describe: read the tars themselves
    return sets


def index_batches(s: ShardSet, columns: tuple[str, ...] = INDEX_COLUMNS, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """Stream the index of ``s`` (only ``columns`` that exist; only the selected shards' rows)."""
    import pyarrow.dataset as ds

    assert s.index is not None
    try:
        d = ds.dataset(str(s.index), format="parquet")
    except Exception as e:
        raise InputError(s.index, f"cannot read the index: {e}") from None
    cols = [c for c in columns if c in d.schema.names]
    flt = None
    if s.selected is not None:
        flt = ds.field("shard").isin(s.selected)
    try:
        yield from d.to_batches(columns=cols, filter=flt, batch_size=batch_size)
    except pa.ArrowException as e:
        raise InputError(s.index, f"cannot read the index: {e}") from None


# ---------------------------------------------------------------------------------------------
# facts of one sample json (the same definitions the shard writer uses for its index columns)


def record_turns(rec: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, value) of the record's turns: ``conversations`` (from/value) or ``messages`` (role/content)."""
    conv = rec.get("conversations")
    keys = ("from", "value")
    if conv is None and isinstance(rec.get("messages"), list):
        conv, keys = rec["messages"], ("role", "content")
    out = []
    if isinstance(conv, list):
        for t in conv:
            if isinstance(t, dict):
                v = t.get(keys[1])
                out.append((str(t.get(keys[0])), v if isinstance(v, str) else ""))
    return out


def text_chars(rec: dict[str, Any]) -> int:
    """Characters of all turn values with ``<image>`` removed (the index's ``text_chars``)."""
    return sum(len(v) - v.count(IMAGE_TAG) * len(IMAGE_TAG) for _, v in record_turns(rec))


def image_paths(rec: dict[str, Any]) -> list[str]:
    """The record's image paths: ``image`` (a string or a list) or a messages-shape ``images`` list."""
    img = rec.get("image", rec.get("images") if "conversations" not in rec else None)
    if img is None:
        return []
    if isinstance(img, str):
        return [img]
    if isinstance(img, list):
        return [x for x in img if isinstance(x, str)]
    return []


def as_int(x: Any) -> int:
    """``x`` when it is a non-negative int (not a bool), else 0: damaged json must not crash a summary."""
    return x if type(x) is int and x >= 0 else 0


def sample_row(rec: Any, key: str, shard: str, offset: int, nbytes: int) -> dict[str, Any]:
    """An index-like row from a sample json (for tars that have no index beside them)."""
    rec = rec if isinstance(rec, dict) else {}
    imgs = rec.get("images") if isinstance(rec.get("images"), list) else []
    imgs = [i for i in imgs if isinstance(i, dict)]
    toks = [as_int(i.get("image_tokens")) for i in imgs]
    src = rec.get("source")
    return {
        "key": key, "shard": shard, "id": str(rec.get("id", "")), "offset": offset, "nbytes": nbytes,
        "n_images": len(imgs), "image_tokens": as_int(rec.get("image_tokens", sum(toks))),
        "image_tokens_list": toks,
        "widths": [as_int(i.get("width")) for i in imgs], "heights": [as_int(i.get("height")) for i in imgs],
        "text_chars": text_chars(rec), "n_turns": len(record_turns(rec)),
        "source": src if isinstance(src, str) else "",
    }


def loads_json(data: bytes) -> Any:
    """orjson.loads; raises ValueError with a short message on bad JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} at char {e.pos}") from None
