"""Write deterministic webdataset shards: ordered parallel workers -> tars, index, manifest, rejects.

Records are read in input order and handed to worker processes in chunks; results are consumed
in submission order, so keys, shard boundaries and bytes never depend on ``workers``. Each shard
is written to ``.shard-NNNNNN.tar.tmp`` and renamed when complete; after each rename a line is
appended to ``.shard-journal.jsonl`` (its sha256, index rows, rejects and the input position),
so ``resume=True`` keeps the verified complete shards and continues from there with identical bytes.
The journal is removed once the manifest is written; resuming a finished folder is then a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mmdata.errors import InputError, MMDataError
from mmdata.io import atomic_write, iter_json_records
from mmdata.procs import die_with_parent
from mmdata.rules import RULES
from mmdata.shard import tarfmt
from mmdata.shard.index import IndexColumns, to_table, write_index
from mmdata.shard.manifest import ShardInfo, build_manifest, write_manifest
from mmdata.shard.resize import ResizeSpec, created_with
from mmdata.shard.sample import Reject, Sample, SampleMaker, Task
from mmdata.models.qwen2vl import DEFAULT_MAX_IMAGE_TOKENS

__all__ = ["write_shards", "ShardReport", "JOURNAL", "shard_name"]

JOURNAL = ".shard-journal.jsonl"
_SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")
_TMP_RE = re.compile(r"^\.shard-\d{6}\.tar\.tmp$")
CHUNK = 16  # records per worker task


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


@dataclass
class ShardReport:
    """What a run did: counts, shards and time (the manifest holds the same numbers)."""

    out_dir: Path
    records: int = 0
    samples: int = 0
    rejected: int = 0
    images: int = 0
    passthrough: int = 0
    image_tokens: int = 0
    bytes: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    resumed_shards: int = 0
    seconds: float = 0.0
    text_tokens: bool = False


# ---------------------------------------------------------------------------------------------
# worker side

_MAKER: SampleMaker | None = None
_TOK: Any = None
_TEMPLATE: str | None = None


def _init_worker(images_root: str, spec: ResizeSpec, tokenizer: str | None, template: str,
                 parent: int | None = None) -> None:
    global _MAKER, _TOK, _TEMPLATE
    if parent is not None:
        die_with_parent(parent)
    _MAKER = SampleMaker(images_root, spec)
    _TEMPLATE = template
    _TOK = None
    if tokenizer is not None:
        from mmdata.text.tokenizer import load_tokenizer

        _TOK = load_tokenizer(tokenizer)


def _run_chunk_safe(tasks: list[Task]) -> tuple:
    """_run_chunk for a pool worker: errors come back as plain tuples (always picklable, so a
    failing worker can never leave the parent waiting on a result that cannot be unpickled)."""
    try:
        return ("ok", _run_chunk(tasks))
    except MMDataError as e:
        return ("input_error", getattr(e, "path", None), getattr(e, "message", str(e)),
                getattr(e, "line", None), getattr(e, "col", None))
    except Exception:
        import traceback

        return ("error", traceback.format_exc())


def _unwrap(result: tuple) -> list[Sample | Reject]:
    if result[0] == "ok":
        return result[1]
    if result[0] == "input_error":
        raise InputError(*result[1:])
    raise RuntimeError(f"a shard worker failed:\n{result[1]}")


def _run_chunk(tasks: list[Task]) -> list[Sample | Reject]:
    assert _MAKER is not None
    out = [_MAKER.make(t) for t in tasks]
    if _TOK is not None:
        _pretokenize([r for r in out if isinstance(r, Sample)])
    for r in out:
        if isinstance(r, Sample):
            r.record = None  # not needed by the writer: do not pickle it back
    return out


def ids_member(input_ids: Any, labels: Any) -> bytes:
    """The ``{key}.ids.npy`` bytes: ``np.save`` of int32 little-endian [2, L] (row 0 input_ids, row 1
    labels, -100 = no loss). The npy header depends only on dtype and shape, so the bytes are fixed."""
    import io

    import numpy as np

    arr = np.ascontiguousarray(np.stack([np.asarray(input_ids), np.asarray(labels)]).astype("<i4", copy=False))
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _pretokenize(samples: list[Sample]) -> None:
    """Fill ``text_tokens`` and ``ids`` (the template encoding the loader would make) of each sample.

    A sample the template cannot encode keeps no ids (the loader then encodes it and counts it as it
    always did); its ``text_tokens`` is still the rendered text's count, or -1 if it cannot render.
    """
    from mmdata.errors import InputError as _InputError
    from mmdata.text.templates import (
        TemplateError,
        encode_conversation,
        text_token_counts,
    )

    failed: list[Sample] = []
    for s in samples:
        try:
            enc = encode_conversation(s.record, _TOK, _TEMPLATE, s.image_tokens)  # type: ignore[arg-type]
        except (TemplateError, _InputError):
            failed.append(s)
            continue
        s.text_tokens = len(enc.input_ids) - sum(s.image_tokens)
        s.ids = ids_member(enc.input_ids, enc.labels)
    if failed:
        counts = text_token_counts([s.record for s in failed], _TOK, _TEMPLATE)  # type: ignore[misc]
        for s, c in zip(failed, counts.tolist()):
            s.text_tokens = int(c)


# ---------------------------------------------------------------------------------------------
# main side


def _tasks(inputs: list[Path], start: tuple[int, int]) -> Iterator[Task]:
    for fi, path in enumerate(inputs):
        if fi < start[0]:
            continue
        stem = path.stem
        for index, line, rec in iter_json_records(path):
            if fi == start[0] and index < start[1]:
                continue
            yield Task(fi, stem, index, line, rec)


def _chunks(tasks: Iterator[Task], n: int) -> Iterator[list[Task]]:
    buf: list[Task] = []
    for t in tasks:
        buf.append(t)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _ordered(chunks: Iterator[list[Task]], workers: int, init_args: tuple) -> Iterator[tuple[list[Task], list]]:
    """(chunk, results) in input order; at most ``4 * workers`` chunks in flight (bounded memory)."""
    if workers <= 1:
        _init_worker(*init_args)
        for ch in chunks:
            yield ch, _run_chunk(ch)
        return
    import multiprocessing as mp

    # fork: no re-import of the caller's __main__ (library use from a plain script); spawn elsewhere.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(*init_args, os.getpid()))
    try:
        pending: deque = deque()
        for ch in chunks:
            pending.append((ch, pool.apply_async(_run_chunk_safe, (ch,))))
            if len(pending) >= 4 * workers:
                c, r = pending.popleft()
                yield c, _unwrap(r.get())
        while pending:
            c, r = pending.popleft()
            yield c, _unwrap(r.get())
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _OpenShard:
    """A shard being written under its temporary name, hashed as it goes."""

    def __init__(self, out_dir: Path, idx: int, first_key: str, start_row: int):
        self.idx = idx
        self.name = shard_name(idx)
        self.final = out_dir / self.name
        self.tmp = out_dir / f".{self.name}.tmp"
        self.f = open(self.tmp, "wb")
        self.sha = hashlib.sha256()
        self.size = 0
        self.samples = 0
        self.passthrough = 0
        self.first_key = first_key
        self.last_key = first_key
        self.start_row = start_row

    def add(self, key: str, data: bytes) -> int:
        offset = self.size
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)
        self.samples += 1
        self.last_key = key
        return offset

    def close(self) -> ShardInfo:
        end = tarfmt.end_of_archive(self.size)
        self.f.write(end)
        self.sha.update(end)
        self.size += len(end)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        return ShardInfo(self.name, self.samples, self.size, self.sha.hexdigest(), self.first_key, self.last_key)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _check_same_run(out_dir: Path, inputs: list[Path], old: dict, options: dict, hashes: list[str]) -> None:
    """InputError (exit 2, one line) unless ``old`` (a journal header or a manifest) records the same
    options and the same input contents (sha256) as this run."""
    if old.get("options") != options:
        raise InputError(
            out_dir, "--resume: options or inputs differ from the run being resumed (run again without --resume)"
        )
    old_hashes = old.get("input_sha256")
    for i, p in enumerate(inputs):
        if not isinstance(old_hashes, list) or i >= len(old_hashes) or old_hashes[i] != hashes[i]:
            raise InputError(p, "--resume: input changed since the run being resumed (sha256 differs); "
                                "run again without --resume")


def _read_journal(out_dir: Path, inputs: list[Path], header: dict) -> list[dict]:
    """Journal entries of complete, verified shards (a prefix); InputError if options or inputs differ."""
    path = out_dir / JOURNAL
    if not path.exists():
        return []
    entries: list[dict] = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    try:
        first = orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        return []
    _check_same_run(out_dir, inputs, first.get("header") or {}, header["options"], header["input_sha256"])
    for i, raw in enumerate(lines[1:]):
        try:
            e = orjson.loads(raw)
        except orjson.JSONDecodeError:
            break  # a torn last line from a crash
        info = e["shard"]
        p = out_dir / info["name"]
        if info["name"] != shard_name(i) or not p.exists() or p.stat().st_size != info["bytes"]:
            break
        if _sha256_file(p) != info["sha256"]:
            break
        entries.append(e)
    return entries


def _finished_run(out_dir: Path, inputs: list[Path], options: dict, hashes: list[str]) -> ShardReport | None:
    """The report of a complete run already in ``out_dir`` with these options and inputs, checked
    cheaply (files present, shard sizes as in the manifest; no re-hashing), else None."""
    try:
        manifest = orjson.loads((out_dir / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or "shards" not in manifest:
        return None
    _check_same_run(out_dir, inputs, manifest, options, hashes)
    shards = [ShardInfo(**s) for s in manifest["shards"]]
    names = {s.name for s in shards}
    for s in shards:
        p = out_dir / s.name
        if not p.is_file() or p.stat().st_size != s.bytes:
            return None
    for p in out_dir.iterdir():
        if (_SHARD_RE.match(p.name) and p.name not in names) or _TMP_RE.match(p.name):
            return None
    if not (out_dir / "index.parquet").is_file() or not (out_dir / "rejects.jsonl").is_file():
        return None
    return ShardReport(
        out_dir=out_dir, records=manifest["samples"] + manifest["rejected"], samples=manifest["samples"],
        rejected=manifest["rejected"], images=manifest["images"], passthrough=manifest["passthrough_images"],
        image_tokens=manifest["image_tokens"], bytes=sum(s.bytes for s in shards), shards=shards,
        reasons=dict(manifest["reject_reasons"]), resumed_shards=len(shards),
        text_tokens="text_tokens" in options,
    )


def _clean_out_dir(out_dir: Path, keep: int) -> None:
    """Remove shards numbered >= keep, temp shards and stale outputs of an earlier run."""
    for p in out_dir.iterdir():
        n = p.name
        if _TMP_RE.match(n) or (_SHARD_RE.match(n) and int(n[6:12]) >= keep):
            p.unlink()
    for n in ("manifest.json", "index.parquet", "rejects.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            (out_dir / n).unlink()


def _check_options(inputs: list[Path], images_root: Path, spec: ResizeSpec, samples_per_shard: int | None,
                   max_shard_bytes: int, quality: int) -> None:
    if spec.rule not in RULES:
        raise InputError(None, f"--rule: unknown rule {spec.rule!r}; choose one of {', '.join(RULES)}")
    if spec.max_res < 28:
        raise InputError(None, f"--max-res must be at least 28, got {spec.max_res}")
    if spec.max_image_tokens < 1:
        raise InputError(None, f"--max-image-tokens must be positive, got {spec.max_image_tokens}")
    if samples_per_shard is not None and samples_per_shard < 1:
        raise InputError(None, f"--samples-per-shard must be positive, got {samples_per_shard}")
    if max_shard_bytes < 10240:
        raise InputError(None, f"--max-shard-bytes must be at least 10 kB, got {max_shard_bytes}")
    if not 1 <= quality <= 100:
        raise InputError(None, f"--quality must be 1..100, got {quality}")
    if not inputs:
        raise InputError(None, "no input files given")
    for p in inputs:
        if not p.exists():
            raise InputError(p, "no such file")
        if p.is_dir():
            raise InputError(p, "is a directory, expected a JSON or JSON Lines file")
    if not images_root.is_dir():
        raise InputError(images_root, "--images: no such directory")


def _make_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "--out: exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out_dir, f"--out: cannot create: {e.strerror or e}") from None


def write_shards(
    inputs: list[str | Path] | str | Path,
    images_root: str | Path,
    out_dir: str | Path,
    *,
    max_res: int = 448,
    max_image_tokens: int = DEFAULT_MAX_IMAGE_TOKENS,
    rule: str = "qwen2vl",
    samples_per_shard: int | None = None,
    max_shard_bytes: int = 1_000_000_000,
    quality: int = 90,
    workers: int | None = None,
    resume: bool = False,
    tokenizer: str | Path | None = None,
    template: str = "qwen2vl",
    progress: Callable[[int, int, int], None] | None = None,
) -> ShardReport:
    """Shard cleaned conversation files into ``out_dir`` (see docs/shard.md and CONTRACT s.3).

    Same inputs and options give byte-identical outputs whatever ``workers`` is; ``resume`` keeps
    the complete shards of a killed run and ends with the bytes an uninterrupted run gives.
    ``progress(records_done, samples, rejected)`` is called after each chunk of records.
    """
    t0 = time.perf_counter()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    inputs = [Path(p) for p in inputs]
    images_root, out_dir = Path(images_root), Path(out_dir)
    spec = ResizeSpec(rule=rule, max_res=max_res, max_image_tokens=max_image_tokens, quality=quality)
    _check_options(inputs, images_root, spec, samples_per_shard, max_shard_bytes, quality)
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    tok_sha = None
    if tokenizer is not None:
        try:
            from mmdata.text.templates import TEMPLATES, text_token_counts  # noqa: F401
            from mmdata.text.tokenizer import load_tokenizer
        except ImportError as e:
            raise InputError(None, f"--tokenizer needs the loader's tokenizer and templates: {e}") from None
        if template not in TEMPLATES:
            raise InputError(None, f"--template: unknown chat template {template!r} (choose from {', '.join(TEMPLATES)})")
        tok_sha = load_tokenizer(tokenizer).sha256
        tokenizer = str(tokenizer)

    options: dict[str, Any] = {
        "rule": rule,
        "max_res": max_res,
        "max_image_tokens": max_image_tokens,
        "quality": quality,
        "samples_per_shard": samples_per_shard,
        "max_shard_bytes": max_shard_bytes,
        "inputs": [p.name for p in inputs],
        "created_with": created_with(),  # the pixel libraries that fix re-encoded images' bytes
    }
    if tok_sha is not None:
        options["text_tokens"] = {"template": template, "tokenizer_sha256": tok_sha}
    hashes = [_sha256_file(p) for p in inputs]  # streamed; what --resume compares (a size can stay the same)
    header = {"options": options, "input_bytes": [p.stat().st_size for p in inputs], "input_sha256": hashes}

    _make_out_dir(out_dir)
    journal_path = out_dir / JOURNAL
    if resume and not journal_path.exists():
        done = _finished_run(out_dir, inputs, options, hashes)
        if done is not None:  # a finished folder: nothing to do, nothing rewritten
            done.seconds = time.perf_counter() - t0
            return done
    report = ShardReport(out_dir=out_dir, text_tokens=tok_sha is not None)
    has_tt = tok_sha is not None
    cols = IndexColumns(with_text_tokens=has_tt)  # rows of the open shard; closed shards -> arrow
    tables: list = []
    images = image_tokens = resumed_passthrough = 0
    rejects: list[dict] = []
    reasons: Counter = Counter()
    start = (0, 0)

    entries = _read_journal(out_dir, inputs, header) if resume else []
    _clean_out_dir(out_dir, keep=len(entries))
    for e in entries:
        report.shards.append(ShardInfo(**e["shard"]))
        tables.append(to_table(e["rows"]))
        images += sum(e["rows"]["n_images"])
        image_tokens += sum(e["rows"]["image_tokens"])
        rejects.extend(e["rejects"])
        resumed_passthrough += e.get("passthrough", 0)
        start = tuple(e["next"])  # type: ignore[assignment]
    report.resumed_shards = len(entries)
    # Rewrite the journal as exactly the verified prefix (drops a torn or unverified tail).
    with atomic_write(journal_path) as jf:
        jf.write(orjson.dumps({"header": header}) + b"\n")
        for e in entries:
            jf.write(orjson.dumps(e) + b"\n")
    del entries  # the rows now live in ``tables``
    journal = open(journal_path, "ab")
    for r in rejects:
        reasons[r["reason"]] += 1
    report.records = (sum(s.samples for s in report.shards) + len(rejects))

    n = sum(t.num_rows for t in tables)  # next sample number = next key
    journaled_rejects = len(rejects)
    shard: _OpenShard | None = None
    last_pos = start
    init_args = (str(images_root), spec, tokenizer, template)

    def close_shard() -> None:
        nonlocal shard, journaled_rejects, cols
        assert shard is not None
        info = shard.close()
        report.shards.append(info)
        new_rejects = [r for r in rejects[journaled_rejects:] if (r["_file"], r["index"]) < last_pos]
        journaled_rejects += len(new_rejects)
        entry = {"shard": info.__dict__, "next": list(last_pos), "rows": dict(cols),
                 "rejects": new_rejects, "passthrough": shard.passthrough}
        journal.write(orjson.dumps(entry) + b"\n")
        journal.flush()
        os.fsync(journal.fileno())
        tables.append(to_table(cols))
        cols = IndexColumns(with_text_tokens=has_tt)
        shard = None

    ordered = _ordered(_chunks(_tasks(inputs, start), CHUNK), workers, init_args)
    try:
        for chunk, results in ordered:
            for task, res in zip(chunk, results):
                report.records += 1
                if isinstance(res, Reject):
                    reasons[res.reason] += 1
                    rejects.append({"index": task.index, "id": res.id, "reason": res.reason, "detail": res.detail,
                                    "input": inputs[task.file_idx].name, "record": task.record,
                                    "_file": task.file_idx})
                    continue
                key = f"{n:09d}"
                members = [(f"{key}.json", res.json)]
                if res.ids is not None:  # pre-tokenised: right after the json, before the images
                    members.append((f"{key}.ids.npy", res.ids))
                if len(res.images) == 1:
                    members.append((f"{key}.jpg", res.images[0]))
                else:
                    members += [(f"{key}.{i}.jpg", d) for i, d in enumerate(res.images)]
                data = tarfmt.sample_bytes(members)
                # The limit holds for the finished file: end-of-archive blocks and record padding count.
                # A sample too big for any shard still gets one of its own.
                if shard is not None and tarfmt.archive_size(shard.size + len(data)) > max_shard_bytes:
                    close_shard()
                if shard is None:
                    shard = _OpenShard(out_dir, len(report.shards), key, n)
                offset = shard.add(key, data)
                cols["key"].append(key)
                cols["shard"].append(shard.name)
                cols["shard_idx"].append(shard.idx)
                cols["offset"].append(offset)
                cols["nbytes"].append(len(data))
                cols["id"].append(res.id)
                cols["n_images"].append(len(res.images))
                cols["image_tokens"].append(sum(res.image_tokens))
                cols["image_tokens_list"].append(res.image_tokens)
                cols["widths"].append(res.widths)
                cols["heights"].append(res.heights)
                cols["text_chars"].append(res.text_chars)
                cols["n_turns"].append(res.n_turns)
                cols["source"].append(res.source)
                if has_tt:
                    cols["text_tokens"].append(res.text_tokens)
                n += 1
                images += len(res.images)
                image_tokens += sum(res.image_tokens)
                report.passthrough += res.passthrough
                shard.passthrough += res.passthrough
                last_pos = (task.file_idx, task.index + 1)
                if samples_per_shard is not None and shard.samples >= samples_per_shard:
                    close_shard()
            if progress is not None:
                progress(report.records, n, len(rejects))
        if shard is not None:
            close_shard()
    except BaseException:
        if shard is not None:
            shard.discard()
        raise
    finally:
        ordered.close()  # stops the worker pool now, not when the traceback is collected
        journal.close()

    # Images counted from the index so resumed shards are included.
    report.samples = n
    report.rejected = len(rejects)
    report.images = images
    report.image_tokens = image_tokens
    report.bytes = sum(s.bytes for s in report.shards)
    report.reasons = dict(sorted(reasons.items()))
    report.passthrough += resumed_passthrough

    write_index(out_dir / "index.parquet", tables, with_text_tokens=has_tt)
    with atomic_write(out_dir / "rejects.jsonl") as f:
        for r in rejects:
            r = {k: v for k, v in r.items() if k != "_file"}
            f.write(orjson.dumps(r) + b"\n")
    manifest = build_manifest(options, report.shards, report.samples, report.rejected, report.image_tokens,
                              report.reasons, report.passthrough, report.images, input_sha256=hashes)
    write_manifest(out_dir / "manifest.json", manifest)
    # The manifest (options, input sha256, shards) now records the finished run; --resume on this
    # folder checks it instead, so the journal is not needed any more.
    journal_path.unlink()
    _fsync_dir(out_dir)
    report.seconds = time.perf_counter() - t0
    return report
