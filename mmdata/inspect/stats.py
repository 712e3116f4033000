"""The summary of a shard data set from its index and manifest alone (no tar is opened when they exist).

Distributions are kept as exact integer histograms, so min / p50 / mean / p95 / max are exact (the same
numbers ``numpy.percentile`` gives on the full column) in memory that does not grow with the sample count.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import storage
from mmdata.format.sample import SampleError, ShardSample
from mmdata.inspect.dataset import ShardSet, index_batches, is_file, resolve, sample_row
from mmdata.inspect.problems import Problem
from mmdata.format.tar import HashingReader, TarFormatError, group_samples, iter_members

_DENSE = 1 << 20  # values below this are counted in a dense array, larger ones in a dict


class IntHist:
    """Exact histogram of non-negative integers: add arrays, then ask for quantiles."""

    def __init__(self) -> None:
        self.dense = np.zeros(0, dtype=np.int64)
        self.sparse: Counter[int] = Counter()
        self.n = 0
        self.total = 0

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.int64).ravel()
        if not len(v):
            return
        v = np.maximum(v, 0)
        self.n += len(v)
        self.total += int(v.sum())
        small = v[v < _DENSE]
        if len(small):
            c = np.bincount(small)
            if len(c) > len(self.dense):
                c[: len(self.dense)] += self.dense
                self.dense = c
            else:
                self.dense[: len(c)] += c
        big = v[v >= _DENSE]
        if len(big):
            u, c = np.unique(big, return_counts=True)
            self.sparse.update(dict(zip(u.tolist(), c.tolist())))

    def merge(self, other: "IntHist") -> None:
        if len(other.dense):
            if len(other.dense) > len(self.dense):
                d = other.dense.copy()
                d[: len(self.dense)] += self.dense
                self.dense = d
            else:
                self.dense[: len(other.dense)] += other.dense
        self.sparse.update(other.sparse)
        self.n += other.n
        self.total += other.total

    def values_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct values (ascending) and their counts."""
        nz = np.nonzero(self.dense)[0]
        vals, cnts = nz.astype(np.int64), self.dense[nz]
        if self.sparse:
            items = sorted(self.sparse.items())
            vals = np.concatenate([vals, np.array([k for k, _ in items], dtype=np.int64)])
            cnts = np.concatenate([cnts, np.array([c for _, c in items], dtype=np.int64)])
        return vals, cnts

    def quantile(self, q: float) -> float:
        """numpy's default (linear) percentile over the counted values."""
        vals, cnts = self.values_counts()
        cum = np.cumsum(cnts)
        pos = (self.n - 1) * q
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        v_lo = vals[np.searchsorted(cum, lo, side="right")]
        v_hi = vals[np.searchsorted(cum, hi, side="right")]
        return float(v_lo + (v_hi - v_lo) * (pos - lo))

    def summary(self) -> dict[str, float | int] | None:
        """{min, p50, mean, p95, max} (ints where exact), or None when empty."""
        if self.n == 0:
            return None
        vals, _ = self.values_counts()
        return {"min": int(vals[0]), "p50": _num(self.quantile(0.5)), "mean": round(self.total / self.n, 3),
                "p95": _num(self.quantile(0.95)), "max": int(vals[-1])}


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(x, 3)


class Accumulator:
    """Everything the summary counts, fed one index record batch at a time."""

    def __init__(self) -> None:
        self.samples = 0
        self.image_tokens = IntHist()
        self.tokens_per_image = IntHist()
        self.text_chars = IntHist()
        self.text_tokens = IntHist()
        self.n_images = IntHist()
        self.n_turns = IntHist()
        self.long_side = IntHist()
        self.short_side = IntHist()
        self.sizes: Counter[tuple[int, int]] = Counter()
        self.sources: Counter[str] = Counter()
        self.rows_per_shard: Counter[str] = Counter()
        self.has_text_tokens = False

    def add(self, b: pa.RecordBatch) -> None:
        cols = b.schema.names
        self.samples += b.num_rows

        def arr(name: str) -> np.ndarray:
            return b.column(name).to_numpy(zero_copy_only=False)

        if "image_tokens" in cols:
            self.image_tokens.add(arr("image_tokens"))
        if "image_tokens_list" in cols:
            self.tokens_per_image.add(pc.list_flatten(b.column("image_tokens_list")).to_numpy(zero_copy_only=False))
        if "text_chars" in cols:
            self.text_chars.add(arr("text_chars"))
        if "text_tokens" in cols:
            self.has_text_tokens = True
            tt = arr("text_tokens")
            self.text_tokens.add(tt[tt >= 0])  # -1: a record the writer's template could not render
        if "n_images" in cols:
            self.n_images.add(arr("n_images"))
        if "n_turns" in cols:
            self.n_turns.add(arr("n_turns"))
        if "widths" in cols and "heights" in cols:
            w = pc.list_flatten(b.column("widths")).to_numpy(zero_copy_only=False).astype(np.int64)
            h = pc.list_flatten(b.column("heights")).to_numpy(zero_copy_only=False).astype(np.int64)
            if len(w) == len(h) and len(w):
                self.long_side.add(np.maximum(w, h))
                self.short_side.add(np.minimum(w, h))
                u, c = np.unique(w * (1 << 32) + h, return_counts=True)
                self.sizes.update({(int(x >> 32), int(x & 0xFFFFFFFF)): int(n) for x, n in zip(u, c)})
        if "source" in cols:
            vc = pc.value_counts(b.column("source"))
            self.sources.update({str(v["values"]) if v["values"] is not None else "": int(v["counts"])
                                 for v in vc.to_pylist()})
        if "shard" in cols:
            vc = pc.value_counts(b.column("shard"))
            self.rows_per_shard.update({str(v["values"]): int(v["counts"]) for v in vc.to_pylist()})


def _scan_tar(path: Path, acc: Accumulator, problems: list[Problem], chunk: int = 4096) -> None:
    """Fill ``acc`` from a tar's json members (used when no index describes the tar)."""
    rows: list[dict[str, Any]] = []
    name = path.name
    try:
        with storage.open_input(path) as f:
            for s in group_samples(iter_members(HashingReader(f, hash_it=False))):
                data = s.files.get("json")
                rec: Any = None
                if data is None:
                    problems.append(Problem(name, s.key, "sample has no .json member", "missing_json"))
                else:
                    try:
                        rec = ShardSample.from_json(data).record
                    except SampleError as e:
                        problems.append(Problem(name, s.key, f"{s.key}.json: {e.detail}", "bad_json"))
                rows.append(sample_row(rec, s.key, name, s.offset, s.end - s.offset))
                if len(rows) >= chunk:
                    acc.add(pa.RecordBatch.from_pylist(rows))
                    rows = []
    except TarFormatError as e:
        problems.append(Problem(name, e.key, str(e), "truncated" if "truncated" in e.message else "bad_tar"))
    except OSError as e:
        problems.append(Problem(name, None, f"cannot read: {e.strerror or e}", "unreadable"))
    if rows:
        acc.add(pa.RecordBatch.from_pylist(rows))


MISSING_MANIFEST = "missing_manifest"
SUMMARY_WARNINGS = frozenset({MISSING_MANIFEST})  # problems for --verify, warnings for the summary


def cheap_checks(s: ShardSet, acc_rows_per_shard: Counter[str], index_rows: int | None) -> list[Problem]:
    """Checks that cost a stat per shard: files present, sizes and counts as the manifest says."""
    out: list[Problem] = []
    ms = s.manifest_shards()
    for name in s.extra:
        out.append(Problem(name, None, "tar is in the folder but not in manifest.json", "not_in_manifest"))
    if s.manifest is None and (s.selected is None or s.index is not None):
        # a shard folder (or tars next to an index) without its manifest: nothing to check counts and
        # sha256 against. An error for --verify; the summary reports it as a warning.
        out.append(Problem("-", None, f"{s.root / 'manifest.json'} is missing: shard counts, bytes and sha256 "
                           "cannot be checked", MISSING_MANIFEST))
    if s.manifest is not None and s.index is None:
        out.append(Problem("-", None, f"{s.root / 'index.parquet'} is missing: stats were read from the tars",
                           "missing_index"))
    for tar in s.tars:
        entry = ms.get(tar.name)
        try:
            size = tar.stat().st_size
        except FileNotFoundError:
            out.append(Problem(tar.name, None, "shard listed in manifest.json is missing", "missing_shard"))
            continue
        if entry is None:
            continue
        if isinstance(entry.get("bytes"), int) and entry["bytes"] != size:
            out.append(Problem(tar.name, None, f"size {size} bytes, manifest says {entry['bytes']}", "bytes_mismatch"))
        if index_rows is not None and isinstance(entry.get("samples"), int):
            got = acc_rows_per_shard.get(tar.name, 0)
            if got != entry["samples"]:
                out.append(Problem(tar.name, None, f"index has {got} samples, manifest says {entry['samples']}",
                                   "count_mismatch"))
    if s.manifest is not None and s.selected is None:
        total = s.manifest.get("samples")
        listed = sum(int(x.get("samples") or 0) for x in s.manifest["shards"])
        if isinstance(total, int) and total != listed:
            out.append(Problem("-", None, f"manifest says {total} samples but its shards add up to {listed}",
                               "count_mismatch"))
        if isinstance(total, int) and index_rows is not None and index_rows != total:
            out.append(Problem("-", None, f"index has {index_rows} rows, manifest says {total} samples",
                               "count_mismatch"))
    return out


def _size_str(wh: tuple[int, int]) -> str:
    return f"{wh[0]}x{wh[1]}"


def inspect_shards(paths: list[str | Path], *, top_sizes: int = 8) -> dict[str, Any]:
    """Summary of the data set(s) at ``paths`` (folders or tars) as one JSON-able dict.

    Keys: samples, shards, bytes, image_tokens / text_chars / text_tokens / images_per_sample
    ({min,p50,mean,p95,max}), resolution, sources, errors (list of problems), and more.
    """
    sets = resolve(paths)
    acc = Accumulator()
    problems: list[Problem] = []
    n_shards = 0
    nbytes = 0
    options: list[dict[str, Any]] = []
    rejected = 0
    for s in sets:
        part = Accumulator()
        if s.index is not None:
            for b in index_batches(s):
                part.add(b)
        else:
            for tar in s.tars:
                if is_file(tar):
                    _scan_tar(tar, part, problems)
                    part.rows_per_shard.setdefault(tar.name, 0)
        problems.extend(cheap_checks(s, part.rows_per_shard, part.samples if s.index is not None else None))
        _merge(acc, part)
        ms = s.manifest_shards()
        n_shards += len(s.tars)
        for tar in s.tars:
            b = ms.get(tar.name, {}).get("bytes")
            if not isinstance(b, int):
                b = storage.size(tar) if is_file(tar) else 0
            nbytes += b
        if s.manifest is not None:
            if isinstance(s.manifest.get("options"), dict) and s.manifest["options"] not in options:
                options.append(s.manifest["options"])
            if s.selected is None:
                rejected += int(s.manifest.get("rejected") or 0)

    empty = {"min": 0, "p50": 0, "mean": 0.0, "p95": 0, "max": 0}
    max_res = options[0].get("max_res") if len(options) == 1 else None
    res: dict[str, Any] = {
        "images": acc.long_side.n,
        "long_side": acc.long_side.summary(),
        "short_side": acc.short_side.summary(),
        "common_sizes": [{"size": _size_str(k), "count": c} for k, c in
                         sorted(acc.sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:top_sizes]],
        "distinct_sizes": len(acc.sizes),
    }
    if isinstance(max_res, int) and acc.long_side.n:
        vals, cnts = acc.long_side.values_counts()
        res["at_max_res"] = int(cnts[vals == max_res].sum())
    n_img_vals, n_img_cnts = acc.n_images.values_counts()
    return {
        "paths": [str(p) for p in paths],
        "stats_from": "index" if all(s.index is not None for s in sets) else "tars",
        "samples": acc.samples,
        "shards": n_shards,
        "bytes": nbytes,
        "rejected_at_shard_time": rejected,
        "images": acc.tokens_per_image.n if acc.tokens_per_image.n else acc.n_images.total,
        "images_per_sample": acc.n_images.summary() or empty,
        "images_per_sample_counts": {str(int(v)): int(c) for v, c in zip(n_img_vals, n_img_cnts)},
        "image_tokens": acc.image_tokens.summary() or empty,
        "image_tokens_total": acc.image_tokens.total,
        "image_tokens_per_image": acc.tokens_per_image.summary() or empty,
        "text_chars": acc.text_chars.summary() or empty,
        "text_tokens": acc.text_tokens.summary() if acc.has_text_tokens else None,
        "turns": acc.n_turns.summary() or empty,
        "resolution": res,
        "sources": dict(sorted(acc.sources.items(), key=lambda kv: (-kv[1], kv[0]))),
        "options": options[0] if len(options) == 1 else options,
        "errors": [p.to_dict() for p in problems if p.code not in SUMMARY_WARNINGS],
        "warnings": [p.to_dict() for p in problems if p.code in SUMMARY_WARNINGS],
    }


def _merge(acc: Accumulator, part: Accumulator) -> None:
    acc.samples += part.samples
    for name in ("image_tokens", "tokens_per_image", "text_chars", "text_tokens", "n_images", "n_turns",
                 "long_side", "short_side"):
        getattr(acc, name).merge(getattr(part, name))
    acc.sizes.update(part.sizes)
    acc.sources.update(part.sources)
    acc.rows_per_shard.update(part.rows_per_shard)
    acc.has_text_tokens |= part.has_text_tokens


def histograms(paths: list[str | Path]) -> dict[str, IntHist]:
    """The exact histograms behind the summary (for ``--plot``)."""
    acc = Accumulator()
    problems: list[Problem] = []
    for s in resolve(paths):
        if s.index is not None:
            for b in index_batches(s):
                acc.add(b)
        else:
            for tar in s.tars:
                if is_file(tar):
                    _scan_tar(tar, acc, problems)
    out = {"image_tokens": acc.image_tokens, "text_chars": acc.text_chars, "long_side": acc.long_side,
           "n_images": acc.n_images}
    if acc.has_text_tokens:
        out["text_tokens"] = acc.text_tokens
    return out
