"""Per-sample token lengths of a shard set, from its index (never by decoding images).

length = text tokens (the template-rendered conversation, image pads excluded) + image tokens.
Text tokens come from the index column ``text_tokens`` when the shard writer made it with the same
tokenizer and template (the manifest's ``options.text_tokens = {tokenizer_sha256, template}``); else
they are counted once by reading only each sample's ``.json`` member (one seek + one read per
sample) and cached under ``$MMDATA_CACHE/derived/<manifest sha256>/`` (``~/.cache/mmdata`` by
default, ``--cache-dir`` in mmtrain; never in the shard folder, which may be read-only or shared),
keyed by (index sha256, tokenizer sha256, template).
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
from mmdata.format.check import TRUNCATED, IndexRows, refuse_first, shard_problems
from mmdata.format.tar import TarFormatError, read_first_member

INDEX = names.INDEX
MANIFEST = names.MANIFEST


@dataclass
class ShardIndex:
    """The columns of ``index.parquet`` the loader uses, as numpy arrays in index order."""

    root: Path  # a local folder, or a url string for remote storage
    manifest: dict
    index_sha256: str
    cache_key: str  # sha256 of manifest.json (of index.parquet when there is none): names its derived caches
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
        cache_key=hashlib.sha256(storage.read_bytes(mpath) if manifest else data).hexdigest(),
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


def cache_dir_for(index: ShardIndex, cache_dir: str | Path | None = None,
                  base: str | Path | None = None) -> Path | None:
    """Where this shard set's length and plan caches go: ``cache_dir`` if given, else
    ``BASE/derived/<manifest sha256[:16]>`` with BASE = ``base`` (``--cache-dir``), ``$MMDATA_CACHE``
    or ``~/.cache/mmdata``; never inside the shard folder (it may be read-only or shared by many
    jobs). None when that folder cannot be made writable: the caches only save time."""
    from mmdata.loader.cache import DERIVED, default_cache_dir

    if cache_dir is not None:
        return Path(cache_dir)
    where = Path(base or default_cache_dir()) / DERIVED / index.cache_key[:16]
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return where if os.access(where, os.W_OK) else None


def text_tokens(index: ShardIndex, tokenizer, template: str, cache_dir: str | Path | None = None) -> np.ndarray:
    """Text tokens per sample (int64 [N]); -1 where the json cannot be read or rendered."""
    from mmdata.text.templates import text_token_counts

    if index.text_tokens is not None and _index_text_tokens_made_with(index.manifest) == (tokenizer.sha256, template):
        return index.text_tokens
    cdir = cache_dir_for(index, cache_dir)
    name = f"text-tokens-{index.index_sha256[:16]}-{tokenizer.sha256[:16]}-{template}.npy"
    cached = cdir / name if cdir is not None else None
    if cached is not None and cached.is_file():
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

    remote = storage.is_remote(index.root)
    for s, name_ in enumerate(index.shards):
        rows = np.flatnonzero(index.shard_idx == s)
        if len(rows) == 0:
            continue
        if remote:  # one round trip per sample is too slow over a network: concurrent ranged reads
            for i, data in zip(rows.tolist(), _remote_first_members(storage.join(index.root, name_), index, rows)):
                try:
                    sample = ShardSample.from_json(data) if data is not None else None
                except SampleError:
                    sample = None
                if sample is not None:
                    batch_i.append(i)
                    batch_r.append(sample.record)
                    if len(batch_r) >= 1024:
                        flush()
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
    if damaged or cached is None:
        return out
    try:
        with storage.atomic_output(cached) as fh:
            np.save(fh, out, allow_pickle=False)
    except OSError:
        pass  # a cache we cannot write only costs time next run
    return out


_HEAD_READ = 64 << 10  # bytes read per sample: a json member (first in the sample) almost always fits


def _remote_first_members(url: str, index: ShardIndex, rows: np.ndarray) -> list[bytes | None]:
    """The first member (the json) of each sample ``rows`` of a remote shard, 32 ranged reads in
    flight; None where it cannot be read (the sample is then counted as bad at planning)."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> bytes | None:
        off, n = int(index.offset[i]), int(index.nbytes[i])
        try:
            blob = storage.read_range(url, off, min(n, _HEAD_READ))
            try:
                return read_first_member(io.BytesIO(blob), 0)
            except TarFormatError:
                if n <= _HEAD_READ:
                    return None
                return read_first_member(io.BytesIO(storage.read_range(url, off, n)), 0)
        except (TarFormatError, OSError):
            return None

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(one, rows.tolist()))


def check_shards(index: ShardIndex) -> dict[str, np.ndarray]:
    """The format's one folder check (``mmdata.format.check``) on this index: InputError naming the
    first missing or replaced shard (or missing manifest) and the fix; else, per truncated shard, the
    rows cut off (the caller weighs them against the bad-sample budget)."""
    rows = IndexRows(index.shards, index.keys, index.shard_idx, index.offset, index.nbytes)
    problems = shard_problems(index.root, index.manifest, rows)
    refuse_first(problems, index.root)
    return {p.path: p.rows for p in problems if p.kind == TRUNCATED}
