"""Per-sample token lengths of a shard set, from its index (never by decoding images).

length = text tokens (the template-rendered conversation, image pads excluded) + image tokens.
Text tokens come from the index column ``text_tokens`` when the shard writer made it with the same
tokenizer and template (the manifest's ``options.text_tokens = {tokenizer_sha256, template}``); else
they are counted once by reading only each sample's ``.json`` member (one seek + one read per
sample) and cached under ``OUTDIR/.mmdata-cache/`` (or ``~/.cache/mmdata/`` when OUTDIR is
read-only), keyed by (index sha256, tokenizer sha256, template).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmdata import storage
from mmdata.errors import InputError
from mmdata.format import names
from mmdata.format.index import REQUIRED, read_table
from mmdata.format.manifest import read_manifest
from mmdata.format.sample import SampleError, ShardSample
from mmdata.format.tar import TarFormatError, parse_header, read_first_member

INDEX = names.INDEX
MANIFEST = names.MANIFEST


@dataclass
class ShardIndex:
    """The columns of ``index.parquet`` the loader uses, as numpy arrays in index order."""

    root: Path  # a local folder, or a url string for remote storage
    manifest: dict
    index_sha256: str
    shards: list[str]  # file names, by shard_idx
    keys: np.ndarray  # object [N]
    ids: np.ndarray  # object [N]
    shard_idx: np.ndarray  # int64 [N]
    offset: np.ndarray  # int64 [N]
    nbytes: np.ndarray  # int64 [N]
    n_images: np.ndarray  # int64 [N]
    image_tokens: np.ndarray  # int64 [N]
    text_tokens: np.ndarray | None  # int64 [N] when the index carries usable ones

    def __len__(self) -> int:
        return len(self.keys)


def read_index(root: str | Path) -> ShardIndex:
    """Read ``root/index.parquet`` and ``root/manifest.json`` (pyarrow; the tars are not opened)."""
    root = storage.local_path(root) or str(root)  # type: ignore[assignment]
    path = storage.join(root, INDEX)
    if not storage.isdir(root):
        raise InputError(root, "shard folder not found")
    if not storage.exists(path) or storage.isdir(path):
        raise InputError(path, "no index.parquet: not a shard folder made by `mmdata shard`")
    mpath = storage.join(root, MANIFEST)
    manifest = read_manifest(mpath) if storage.exists(mpath) else {}
    data = storage.read_bytes(path)
    try:
        table = read_table(data)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputError(path, f"unreadable parquet: {e}") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(path, f"index lacks column(s) {', '.join(missing)}")
    col = {c: table.column(c) for c in table.column_names}
    shard_idx = np.asarray(col["shard_idx"].to_numpy(), dtype=np.int64)
    shard_names = col["shard"].to_pylist()
    n_shards = int(shard_idx.max()) + 1 if len(shard_idx) else 0
    shards = [""] * n_shards
    for i, name in zip(shard_idx.tolist(), shard_names):
        shards[i] = name
    offset = np.asarray(col["offset"].to_numpy(), dtype=np.int64)
    order = np.lexsort((offset, shard_idx))
    if np.any(order != np.arange(len(order))):
        raise InputError(path, "index rows are not in (shard, offset) order")
    text_tokens = None
    if "text_tokens" in col and _index_text_tokens_made_with(manifest) is not None:
        text_tokens = np.asarray(col["text_tokens"].to_numpy(zero_copy_only=False), dtype=np.int64)
    return ShardIndex(
        root=root,
        manifest=manifest,
        index_sha256=hashlib.sha256(data).hexdigest(),
        shards=shards,
        keys=np.asarray(col["key"].to_pylist(), dtype=object),
        ids=np.asarray(col["id"].to_pylist(), dtype=object) if "id" in col else np.asarray(col["key"].to_pylist(), dtype=object),
        shard_idx=shard_idx,
        offset=offset,
        nbytes=np.asarray(col["nbytes"].to_numpy(), dtype=np.int64),
        n_images=np.asarray(col["n_images"].to_numpy(), dtype=np.int64),
        image_tokens=np.asarray(col["image_tokens"].to_numpy(), dtype=np.int64),
        text_tokens=text_tokens,
    )


def _index_text_tokens_made_with(manifest: dict) -> tuple[str, str] | None:
    """(tokenizer sha256, template) the index's ``text_tokens`` were counted with, if recorded."""
    opts = manifest.get("options", {}) if isinstance(manifest, dict) else {}
    tt = opts.get("text_tokens")
    if isinstance(tt, dict) and tt.get("tokenizer_sha256") and tt.get("template"):
        return tt["tokenizer_sha256"], tt["template"]
    return None


def cache_dir_for(root: Path | str, cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``root/.mmdata-cache`` when writable (a local folder), else
    ``~/.cache/mmdata``."""
    if cache_dir is not None:
        return Path(cache_dir)
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmdata"
    if storage.is_remote(root):
        return home
    local = Path(root) / names.CACHE_DIR
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    return home


def text_tokens(index: ShardIndex, tokenizer, template: str, cache_dir: str | Path | None = None) -> np.ndarray:
    """Text tokens per sample (int64 [N]); -1 where the json cannot be read or rendered."""
    from mmdata.loader.templates import text_token_counts

    if index.text_tokens is not None and _index_text_tokens_made_with(index.manifest) == (tokenizer.sha256, template):
        return index.text_tokens
    cdir = cache_dir_for(index.root, cache_dir)
    name = f"text-tokens-{index.index_sha256[:16]}-{tokenizer.sha256[:16]}-{template}.npy"
    cached = cdir / name
    if cached.is_file():
        try:
            arr = np.load(cached, allow_pickle=False)
            if arr.shape == (len(index),):
                return arr.astype(np.int64)
        except (OSError, ValueError):
            pass
    out = np.full(len(index), -1, dtype=np.int64)
    damaged = False  # a sample could not be read: not cached, so a repaired shard is counted again
    batch_i: list[int] = []
    batch_r: list[dict] = []

    def flush() -> None:
        if batch_r:
            out[np.asarray(batch_i)] = text_token_counts(batch_r, tokenizer, template)
            batch_i.clear()
            batch_r.clear()

    for s, name_ in enumerate(index.shards):
        rows = np.flatnonzero(index.shard_idx == s)
        if len(rows) == 0:
            continue
        try:
            f = storage.open_input(storage.join(index.root, name_))
        except OSError:
            damaged = True
            continue  # every sample of a missing shard stays -1 (counted as bad at planning)
        with f:
            for i in rows.tolist():
                try:
                    sample = ShardSample.from_json(read_first_member(f, int(index.offset[i])))
                except (TarFormatError, SampleError, OSError):
                    damaged = True
                    continue
                batch_i.append(i)
                batch_r.append(sample.record)
                if len(batch_r) >= 1024:
                    flush()
    flush()
    if damaged:
        return out
    try:
        with storage.atomic_output(cdir / name) as fh:
            np.save(fh, out, allow_pickle=False)
    except OSError:
        pass  # a cache we cannot write only costs time next run
    return out


def _fix(root: Path | str) -> str:
    return (f"run `mmdata inspect {root} --verify`, then re-shard, or `mmdata shard ... --resume` into the "
            "same --out to rewrite what is damaged")


def _first_member_name(path: str, offset: int) -> str | None:
    """Name of the member whose header is at ``offset`` (None if no valid header is there)."""
    try:
        hdr = storage.read_range(path, offset, 512)
        return parse_header(hdr, offset).name if len(hdr) == 512 and hdr.count(0) != 512 else None
    except TarFormatError:
        return None


def check_shards(index: ShardIndex) -> dict[str, np.ndarray]:
    """Check every shard file the index lists against its rows and the manifest (one stat and one
    512-byte read per shard). A missing shard, or one holding other bytes (another shard's, or a size
    over the manifest's) is an InputError naming the shard and the fix. Returns, per truncated shard,
    the rows cut off (the caller weighs them against the bad-sample budget)."""
    listed = {s.get("name"): s for s in index.manifest.get("shards", []) if isinstance(s, dict)}
    bounds = np.searchsorted(index.shard_idx, np.arange(len(index.shards) + 1))
    lost: dict[str, np.ndarray] = {}
    for s, name in enumerate(index.shards):
        rows = np.arange(bounds[s], bounds[s + 1])
        if not name or len(rows) == 0:
            continue
        path = storage.join(index.root, name)
        if not storage.exists(path):
            raise InputError(path, f"shard file is missing (index.parquet lists {len(rows)} samples in it): "
                                   f"{_fix(index.root)}")
        size = storage.size(path)
        want = listed.get(name, {}).get("bytes")
        if isinstance(want, int) and size > want:
            raise InputError(path, f"{size} bytes, manifest.json says {want}: not the shard the index describes; "
                                   f"{_fix(index.root)}")
        key, first = str(index.keys[rows[0]]), int(index.offset[rows[0]])
        got = _first_member_name(path, first) if first < size else None
        if got is not None and got.rsplit("/", 1)[-1].split(".", 1)[0] != key:
            raise InputError(path, f"holds {got!r} where index.parquet puts {key}.json: replaced by another "
                                   f"shard's bytes? {_fix(index.root)}")
        cut = rows[index.offset[rows] + index.nbytes[rows] > size]
        if got is None and len(cut) < len(rows):
            raise InputError(path, f"no tar header at byte {first} where index.parquet puts {key}.json: "
                                   f"{_fix(index.root)}")
        if len(cut) or (isinstance(want, int) and size < want):
            lost[str(path)] = cut
    return lost
