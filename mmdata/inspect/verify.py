"""``--verify``: read every member of every shard, decode every image, check every json against the
contract (CONTRACT s.1 and s.3) and the shard against its manifest and index. One process per shard.

Every problem names the shard and, where there is one, the sample key; damage is reported, never raised.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import storage
from mmdata.inspect.dataset import ShardSet, as_int, index_batches, loads_json, resolve
from mmdata.inspect.problems import Problem
from mmdata.inspect.stats import cheap_checks
from mmdata.records import validate_record
from mmdata.format.tar import HashingReader, RawSample, TarFormatError, group_samples, iter_members

_IMAGE_EXT = re.compile(r"^(?:(\d+)\.)?(jpg|jpeg|png|webp)$")
_MISSING_LISTED = 3  # how many missing keys a problem names before summarising


@dataclass
class ShardTask:
    """What one worker needs to verify one shard."""

    path: str
    name: str
    entry: dict[str, Any] | None  # manifest entry
    index: str | None  # index.parquet path: the worker reads this shard's rows itself (when ``rows`` is None)
    options: dict[str, Any] = field(default_factory=dict)
    rows: pa.Table | None = None  # this shard's index rows, streamed by the parent


@dataclass
class ShardResult:
    name: str
    samples: int
    problems: list[Problem]


def _index_rows(index: str, name: str) -> dict[str, dict[str, Any]]:
    s = ShardSet(root=Path(index).parent, manifest=None, index=Path(index), tars=[], selected=[name])
    cols = ("key", "offset", "nbytes", "id", "n_images", "image_tokens", "image_tokens_list", "widths", "heights",
            "text_tokens")
    rows: dict[str, dict[str, Any]] = {}
    for b in index_batches(s, cols):
        for r in b.to_pylist():
            rows[r["key"]] = r
    return rows


def _image_members(s: RawSample) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Image members in order (``jpg`` or ``0.jpg``, ``1.jpg``, ...) and any odd image names."""
    numbered: list[tuple[int, str, bytes]] = []
    odd: list[str] = []
    for ext, data in s.files.items():
        m = _IMAGE_EXT.match(ext)
        if m is None:
            continue
        numbered.append((int(m.group(1)) if m.group(1) is not None else -1, ext, data))
    numbered.sort()
    if len(numbered) > 1 and any(i < 0 for i, _, _ in numbered):
        odd = [f"{s.key}.{e}" for i, e, _ in numbered if i < 0]
    return [(e, d) for _, e, d in numbered], odd


def _ids_problems(data: bytes, image_tokens: int | None, text_tokens: int | None) -> list[tuple[str, str]]:
    """Problems of a pre-tokenised ``ids.npy`` member: int32 [2, L] (input_ids, labels), first label
    -100, and L minus the image tokens equal to the index's ``text_tokens``."""
    import io

    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        return [("bad_ids", f"not a .npy array: {e}")]
    if arr.dtype != np.int32 or arr.ndim != 2 or arr.shape[0] != 2:
        return [("bad_ids", f"expected int32 [2, L] (input_ids, labels), got {arr.dtype} {list(arr.shape)}")]
    out = []
    if arr.shape[1] == 0 or arr[1, 0] != -100:
        out.append(("bad_ids", "the first label must be -100"))
    if text_tokens is not None and image_tokens is not None and arr.shape[1] - image_tokens != text_tokens:
        out.append(("index_mismatch", f"{arr.shape[1]} ids - {image_tokens} image tokens != index text_tokens {text_tokens}"))
    return out


Bad = Callable[[str, str], None]  # bad(code, message): records one problem of the sample being checked


def _json_problems(s: RawSample, n_images: int, bad: Bad,
                   check_record: Callable[[dict[str, Any]], list[tuple[str, str]]]) -> tuple[dict[str, Any] | None, list[Any]]:
    """Parse and check ``key.json`` (its ``images`` against the ``n_images`` image members); returns the
    record (None if unusable) and its ``images`` entries."""
    key = s.key
    data = s.files.get("json")
    if data is None:
        bad("missing_json", f"no {key}.json member (members: {', '.join(s.names)})")
        return None, []
    try:
        rec = loads_json(data)
    except ValueError as e:
        bad("bad_json", f"{key}.json: {e}")
        return None, []
    if not isinstance(rec, dict):
        bad("bad_json", f"{key}.json is not a JSON object")
        return None, []
    for code, detail in check_record(rec):
        bad("bad_record", f"{key}.json: {code}: {detail}")
    entries = rec.get("images", [])
    if not isinstance(entries, list):
        bad("bad_record", f"{key}.json: 'images' is not a list")
        entries = []
    if len(entries) != n_images:
        bad("image_count_mismatch", f"{key}.json lists {len(entries)} image(s), the shard holds {n_images}")
    total = rec.get("image_tokens")
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or any(type(e.get(k)) is not int for k in ("width", "height", "image_tokens")):
            bad("bad_record", f"{key}.json: images[{i}] lacks integer width, height and image_tokens")
    listed = sum(as_int(e.get("image_tokens")) for e in entries if isinstance(e, dict))
    if entries and total != listed:
        bad("bad_record", f"{key}.json: image_tokens {total} != sum over its images {listed}")
    return rec, entries


def _task_rule(task: ShardTask):
    """The token rule the shard was made with (None when unknown)."""
    if not task.options.get("rule"):
        return None
    try:
        from mmdata.rules import get_rule

        return get_rule(task.options["rule"])
    except ValueError:
        return None


def _image_problems(key: str, images: list[tuple[str, bytes]], entries: list[Any], task: ShardTask,
                    bad: Bad) -> list[tuple[int, int]]:
    """Decode every image and check it against its json entry and the run's options; returns the
    decoded sizes ((0, 0) for an undecodable image)."""
    from mmdata.images import ImageError, verify_image_bytes

    rule = _task_rule(task)
    max_res, max_tok = task.options.get("max_res"), task.options.get("max_image_tokens")
    sizes: list[tuple[int, int]] = []
    for i, (ext, blob) in enumerate(images):
        name = f"{key}.{ext}"
        try:
            info = verify_image_bytes(blob)
        except ImageError as e:
            bad("bad_image", f"{name}: {e.detail}")
            sizes.append((0, 0))
            continue
        sizes.append((info.width, info.height))
        if info.orientation != 1:
            bad("bad_image", f"{name}: EXIF orientation {info.orientation} left in a stored image")
        e = entries[i] if i < len(entries) and isinstance(entries[i], dict) else None
        if e is None:
            continue
        if (e.get("width"), e.get("height")) != (info.width, info.height):
            bad("size_mismatch", f"{name} is {info.width}x{info.height}, json says {e.get('width')}x{e.get('height')}")
        if isinstance(max_res, int) and max(info.width, info.height) > max_res:
            bad("over_max_res", f"{name} is {info.width}x{info.height}, longer side over --max-res {max_res}")
        if rule is not None and isinstance(max_tok, int):
            t = rule.tokens(info.width, info.height, max_tok)
            if t != e.get("image_tokens"):
                bad("token_mismatch", f"{name}: {t} tokens under {task.options['rule']}, json says {e.get('image_tokens')}")
            if t > max_tok:
                bad("over_token_budget", f"{name}: {t} tokens, over --max-image-tokens {max_tok}")
    return sizes


def _row_problems(s: RawSample, row: dict[str, Any], rec: dict[str, Any] | None, entries: list[Any],
                  n_images: int, sizes: list[tuple[int, int]], bad: Bad) -> None:
    """The sample against its index row: offset, nbytes, id, image count, tokens and sizes."""
    if row.get("offset") is not None and row["offset"] != s.offset:
        bad("index_mismatch", f"index offset {row['offset']}, sample starts at byte {s.offset}")
    if row.get("nbytes") is not None and row["nbytes"] != s.end - s.offset:
        bad("index_mismatch", f"index nbytes {row['nbytes']}, sample spans {s.end - s.offset} bytes")
    if rec is not None:
        if "id" in row and row["id"] != str(rec.get("id")):
            bad("index_mismatch", f"index id {row['id']!r}, json id {rec.get('id')!r}")
        if row.get("n_images") is not None and row["n_images"] != n_images:
            bad("index_mismatch", f"index n_images {row['n_images']}, shard holds {n_images}")
        if row.get("image_tokens") is not None and entries and row["image_tokens"] != rec.get("image_tokens"):
            bad("index_mismatch", f"index image_tokens {row['image_tokens']}, json says {rec.get('image_tokens')}")
    if row.get("widths") is not None and sizes and all(sz != (0, 0) for sz in sizes):
        if list(zip(row["widths"], row["heights"])) != sizes:
            bad("index_mismatch", f"index sizes {list(zip(row['widths'], row['heights']))}, images are {sizes}")


def _check_sample(s: RawSample, shard: str, task: ShardTask, row: dict[str, Any] | None,
                  check_record: Callable[[dict[str, Any]], list[tuple[str, str]]]) -> list[Problem]:
    """Every problem of one sample: key, members, json, images, pre-tokenised ids, index row."""
    out: list[Problem] = []
    key = s.key

    def bad(code: str, msg: str) -> None:
        out.append(Problem(shard, key, msg, code))

    if "." in key.rsplit("/", 1)[-1]:
        bad("bad_key", f"key {key!r} contains a dot")
    images, odd = _image_members(s)
    for name in odd:
        bad("bad_member", f"{name}: a multi-image sample's images must be numbered ({key}.0.jpg, ...)")
    rec, entries = _json_problems(s, len(images), bad, check_record)
    sizes = _image_problems(key, images, entries, task, bad)
    ids = s.files.get("ids.npy")
    if ids is not None:
        img_tok = row.get("image_tokens") if row is not None else None
        if img_tok is None and rec is not None and isinstance(rec.get("image_tokens"), int):
            img_tok = rec["image_tokens"]
        for code, msg in _ids_problems(ids, img_tok, row.get("text_tokens") if row is not None else None):
            bad(code, f"{key}.ids.npy: {msg}")
    if row is not None:
        _row_problems(s, row, rec, entries, len(images), sizes, bad)
    return out


def verify_shard(task: ShardTask) -> ShardResult:
    """Verify one shard completely; never raises for bad data."""
    name = task.name
    problems: list[Problem] = []
    try:
        if task.rows is not None:
            rows = {r["key"]: r for r in task.rows.to_pylist()}
        else:
            rows = _index_rows(task.index, name) if task.index else None
    except Exception as e:  # a broken index is reported, the tar is still checked
        problems.append(Problem(name, None, f"cannot read its index rows: {e}", "bad_index"))
        rows = None
    check_record = validate_record
    seen: set[str] = set()
    prev: str | None = None
    first: str | None = None
    n = 0
    sha = None

    def check(s: RawSample) -> None:
        nonlocal n, first, prev
        n += 1
        first = first if first is not None else s.key
        if s.key in seen:
            problems.append(Problem(name, s.key, "key appears twice in the shard (members not grouped)",
                                    "duplicate_key"))
        elif prev is not None and s.key < prev:
            problems.append(Problem(name, s.key, f"key after {prev}: members not sorted by key", "unsorted"))
        seen.add(s.key)
        prev = s.key
        row = rows.get(s.key) if rows is not None else None
        if rows is not None and row is None:
            problems.append(Problem(name, s.key, "sample is in the shard but not in index.parquet", "index_mismatch"))
        problems.extend(_check_sample(s, name, task, row, check_record))

    try:
        with storage.open_input(task.path) as f:
            r = HashingReader(f)
            try:
                for s in group_samples(iter_members(r)):
                    check(s)
            except TarFormatError as e:
                p = e.pending
                # The sample read when the damage came is checked only if the index says it was complete.
                if p is not None and rows is not None and p.key in rows and rows[p.key].get("nbytes") == p.end - p.offset:
                    check(p)
                key = e.key if e.key is not None else (p.key if p is not None and p.key not in seen else None)
                where = f" (after sample {prev})" if key is None and prev is not None else ""
                code = "truncated" if "truncat" in e.message or "cut" in e.message else "bad_tar"
                problems.append(Problem(name, key, f"{e}{where}", code))
                r.drain()
            sha = r.sha.hexdigest() if r.sha is not None else None
    except FileNotFoundError:
        return ShardResult(name, 0, [Problem(name, None, "shard file is missing", "missing_shard")])
    except OSError as e:
        return ShardResult(name, 0, [Problem(name, None, f"cannot read: {e.strerror or e}", "unreadable")])

    if rows is not None:
        missing = sorted(set(rows) - seen)
        if missing:
            shown = ", ".join(missing[:_MISSING_LISTED]) + (", ..." if len(missing) > _MISSING_LISTED else "")
            problems.append(Problem(name, missing[0], f"{len(missing)} sample(s) in index.parquet are not in the "
                                    f"shard: {shown}", "missing_sample"))
    e = task.entry
    if e is not None:
        if isinstance(e.get("sha256"), str) and sha is not None and e["sha256"] != sha:
            problems.append(Problem(name, None, f"sha256 {sha[:16]}... does not match the manifest's "
                                    f"{e['sha256'][:16]}... (bytes changed)", "sha256_mismatch"))
        if isinstance(e.get("samples"), int) and e["samples"] != n:
            problems.append(Problem(name, None, f"shard holds {n} samples, manifest says {e['samples']}",
                                    "count_mismatch"))
        if n and e.get("first_key") not in (None, first):
            problems.append(Problem(name, first, f"first key {first}, manifest says {e['first_key']}",
                                    "count_mismatch"))
        if n and e.get("last_key") not in (None, prev):
            problems.append(Problem(name, prev, f"last key {prev}, manifest says {e['last_key']}", "count_mismatch"))
    return ShardResult(name, n, problems)


def _safe_verify(task: ShardTask) -> ShardResult:
    try:
        return verify_shard(task)
    except Exception as e:  # a bug must not hide the other shards' results
        return ShardResult(task.name, 0, [Problem(task.name, None, f"verifier failed: {type(e).__name__}: {e}",
                                                  "internal")])


def _runs(col: pa.Array) -> list[tuple[str, int, int]]:
    """(value, start, end) of each run of equal values in a string column."""
    n = len(col)
    if n == 0:
        return []
    if n == 1:
        return [(col[0].as_py(), 0, 1)]
    diff = pc.not_equal(col.slice(1), col.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = [0, *(np.nonzero(diff)[0] + 1).tolist()]
    ends = [*starts[1:], n]
    return [(col[a].as_py(), a, e) for a, e in zip(starts, ends)]


def _set_checks(s: ShardSet) -> tuple[list[Problem], bool]:
    """Index-wide checks: rows per shard against the manifest, keys unique and in order, index rows that
    name no shard. Also says whether each shard's rows are contiguous in the index (then the parent
    streams them to the workers)."""
    problems: list[Problem] = []
    rows_per_shard: Counter[str] = Counter()
    n_rows = 0
    contiguous = True
    prev_key: str | None = None
    prev_shard: str | None = None
    finished: set[str] = set()
    if s.index is not None:
        try:
            for b in index_batches(s, ("key", "shard")):
                n_rows += b.num_rows
                keys, shards = b.column("key"), b.column("shard")
                for name, a, e in _runs(shards):
                    rows_per_shard[name] += e - a
                    if name != prev_shard:
                        if name in finished:
                            contiguous = False
                        if prev_shard is not None:
                            finished.add(prev_shard)
                        prev_shard = name
                if len(keys) > 1:
                    bad = np.nonzero(~pc.greater(keys.slice(1), keys.slice(0, len(keys) - 1))
                                     .to_numpy(zero_copy_only=False))[0]
                    for i in bad[:10].tolist():
                        problems.append(Problem(shards[i + 1].as_py(), keys[i + 1].as_py(),
                                                f"index key {keys[i + 1].as_py()} not after {keys[i].as_py()}: keys "
                                                "repeated or out of order", "duplicate_key"))
                if prev_key is not None and len(keys) and keys[0].as_py() <= prev_key:
                    problems.append(Problem(shards[0].as_py(), keys[0].as_py(), f"index key {keys[0].as_py()} not "
                                            f"after {prev_key}: keys repeated or out of order", "duplicate_key"))
                if len(keys):
                    prev_key = keys[-1].as_py()
        except Exception as e:
            problems.append(Problem("-", None, f"cannot read index.parquet: {e}", "bad_index"))
            contiguous = False
        known = {t.name for t in s.tars}
        for name in sorted(set(rows_per_shard) - known):
            if s.selected is None:
                problems.append(Problem(name, None, f"index.parquet has {rows_per_shard[name]} rows for this shard, "
                                        "which is not in the data set", "index_mismatch"))
    problems.extend(cheap_checks(s, rows_per_shard, n_rows if s.index is not None else None))
    return [p for p in problems if p.code != "missing_shard"], contiguous  # the worker reports a missing file


_ROW_COLS = ("key", "shard", "offset", "nbytes", "id", "n_images", "image_tokens", "widths", "heights", "text_tokens")


def _tasks(s: ShardSet, contiguous: bool) -> Iterator[ShardTask]:
    """One task per shard of ``s``. With a contiguous index the rows travel with the task (one pass over
    the index in the parent); otherwise each worker reads its shard's rows with a filter."""
    ms = s.manifest_shards()
    opts = s.manifest.get("options", {}) if s.manifest else {}
    opts = opts if isinstance(opts, dict) else {}
    tars = {t.name: t for t in s.tars}

    def task(name: str, rows: pa.Table | None) -> ShardTask:
        return ShardTask(path=str(tars[name]), name=name, entry=ms.get(name), options=opts, rows=rows,
                         index=str(s.index) if s.index is not None and rows is None else None)

    if s.index is None or not contiguous:
        for name in tars:
            yield task(name, None)
        return
    done: set[str] = set()
    cur: str | None = None
    parts: list[pa.Table] = []
    for b in index_batches(s, _ROW_COLS):
        t = pa.Table.from_batches([b])
        for name, a, e in _runs(b.column("shard")):
            if name != cur:
                if cur in tars:
                    yield task(cur, pa.concat_tables(parts))
                    done.add(cur)
                cur, parts = name, []
            parts.append(t.slice(a, e - a))
    if cur in tars:
        yield task(cur, pa.concat_tables(parts))
        done.add(cur)
    for name in tars:
        if name not in done:  # a shard with no index rows: every sample in it is reported
            yield task(name, pa.table({"key": pa.array([], pa.string())}))


def verify_shards(paths: list[str | Path], workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[Problem]:
    """Verify every shard at ``paths``; ``workers`` processes (default: one per CPU, at most 32).

    ``progress(done, total)`` is called after each shard. Problems come back in a fixed order: data-set
    checks, then shards in index order. At most ``2 x workers`` shards' index rows are in flight.
    """
    sets = resolve(paths)
    problems: list[Problem] = []
    streams = []
    total = 0
    for s in sets:
        found, contiguous = _set_checks(s)
        problems.extend(found)
        streams.append(_tasks(s, contiguous))
        total += len(s.tars)
    tasks = (t for st in streams for t in st)
    workers = workers or max(1, min(32, os.cpu_count() or 1))
    results: dict[int, ShardResult] = {}
    if progress:
        progress(0, total)
    if workers <= 1 or total <= 1:
        for i, t in enumerate(tasks):
            results[i] = _safe_verify(t)
            if progress:
                progress(len(results), total)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, total)) as ex:
            pending: dict[Any, int] = {}

            def collect(futs) -> None:
                for f in futs:
                    results[pending.pop(f)] = f.result()
                    if progress:
                        progress(len(results), total)

            for i, t in enumerate(tasks):
                pending[ex.submit(_safe_verify, t)] = i
                if len(pending) >= 2 * workers:
                    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    collect(done)
            collect(list(as_completed(list(pending))))
    for i in sorted(results):
        problems.extend(results[i].problems)
    return problems
