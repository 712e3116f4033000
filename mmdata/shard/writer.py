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
import errno
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mmdata.errors import InputError, MMDataError
from mmdata import storage
from mmdata.format import names
from mmdata.format.journal import sha256_file
from mmdata.format.manifest import ShardInfo
from mmdata.format.lock import hold_lock, hold_output_lock
from mmdata.format.writer import ShardWriter
from mmdata.storage.base import WriteError
from mmdata.io import iter_json_records
from mmdata.procs import die_with_parent, resolve_workers
from mmdata.models.rules import RULES
from mmdata.shard.resize import ResizeSpec, created_with
from mmdata.shard.sample import Reject, Sample, SampleMaker, Task
from mmdata.models.qwen2vl import DEFAULT_MAX_IMAGE_TOKENS

__all__ = ["write_shards", "ShardReport", "JOURNAL", "shard_name"]

JOURNAL = names.JOURNAL
shard_name = names.shard_name
CHUNK = 16  # records per worker task


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


def _finished_run(out_dir: Path, inputs: list[Path], options: dict, hashes: list[str]) -> ShardReport | None:
    """The report of a complete run already in ``out_dir`` with these options and inputs, checked
    cheaply (files present, shard sizes as in the manifest; no re-hashing), else None."""
    try:
        manifest = orjson.loads(storage.read_bytes(out_dir / names.MANIFEST))
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or "shards" not in manifest:
        return None
    _check_same_run(out_dir, inputs, manifest, options, hashes)
    shards = [ShardInfo(**s) for s in manifest["shards"]]
    listed = {s.name for s in shards}
    for s in shards:
        p = out_dir / s.name
        if not p.is_file() or storage.size(p) != s.bytes:
            return None
    for n in storage.listdir(out_dir):
        if (names.SHARD_RE.match(n) and n not in listed) or names.TMP_RE.match(n):
            return None
    if not (out_dir / names.INDEX).is_file() or not (out_dir / names.REJECTS).is_file():
        return None
    return ShardReport(
        out_dir=out_dir, records=manifest["samples"] + manifest["rejected"], samples=manifest["samples"],
        rejected=manifest["rejected"], images=manifest["images"], passthrough=manifest["passthrough_images"],
        image_tokens=manifest["image_tokens"], bytes=sum(s.bytes for s in shards), shards=shards,
        reasons=dict(manifest["reject_reasons"]), resumed_shards=len(shards),
        text_tokens="text_tokens" in options,
    )


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
    if not storage.isdir(images_root):
        raise InputError(images_root, "--images: no such directory")


def _make_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "--out: exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out_dir, f"--out: cannot create: {e.strerror or e}") from None


def _tokenizer_sha(tokenizer: str | Path | None, template: str) -> str | None:
    """The sha256 of ``--tokenizer`` (None without one), checking ``--template`` first."""
    if tokenizer is None:
        return None
    try:
        from mmdata.text.templates import TEMPLATES, text_token_counts  # noqa: F401
        from mmdata.text.tokenizer import load_tokenizer
    except ImportError as e:
        raise InputError(None, f"--tokenizer needs the loader's tokenizer and templates: {e}") from None
    if template not in TEMPLATES:
        raise InputError(None, f"--template: unknown chat template {template!r} (choose from {', '.join(TEMPLATES)})")
    return load_tokenizer(tokenizer).sha256


def _run_header(inputs: list[Path], spec: ResizeSpec, samples_per_shard: int | None, max_shard_bytes: int,
                tok_sha: str | None, template: str) -> dict[str, Any]:
    """What identifies a run: options (as the manifest records them), input sizes and sha256."""
    options: dict[str, Any] = {
        "rule": spec.rule,
        "max_res": spec.max_res,
        "max_image_tokens": spec.max_image_tokens,
        "quality": spec.quality,
        "samples_per_shard": samples_per_shard,
        "max_shard_bytes": max_shard_bytes,
        "inputs": [p.name for p in inputs],
        "created_with": created_with(),  # the pixel libraries that fix re-encoded images' bytes
    }
    if tok_sha is not None:
        options["text_tokens"] = {"template": template, "tokenizer_sha256": tok_sha}
    hashes = [sha256_file(p) for p in inputs]  # streamed; what --resume compares (a size can stay the same)
    return {"options": options, "input_bytes": [p.stat().st_size for p in inputs], "input_sha256": hashes}


def _feed(sw: ShardWriter, report: ShardReport, inputs: list[Path], start: tuple[int, int], workers: int,
          init_args: tuple, progress: Callable[[int, int, int], None] | None) -> None:
    """Make the samples of every record from ``start`` on (in worker processes) and write them in order."""
    ordered = _ordered(_chunks(_tasks(inputs, start), CHUNK), workers, init_args)
    try:
        for chunk, results in ordered:
            for task, res in zip(chunk, results):
                report.records += 1
                if isinstance(res, Reject):
                    sw.reject({"index": task.index, "id": res.id, "reason": res.reason, "detail": res.detail,
                               "input": inputs[task.file_idx].name, "record": task.record, "_file": task.file_idx})
                else:
                    sw.add(res, (task.file_idx, task.index + 1))
            if progress is not None:
                progress(report.records, sw.n, len(sw.rejects))
        sw.close_inputs()
    finally:
        ordered.close()  # stops the worker pool now, not when the traceback is collected


def _own_output(p: Path, out_dir: Path) -> bool:
    """Whether ``p`` (resolved) is a file or folder `mmdata shard` writes or deletes in ``out_dir``."""
    out = os.path.realpath(out_dir)
    real = os.path.realpath(p)
    stage = os.path.join(out, names.STAGING)
    if real == stage or real.startswith(stage + os.sep):
        return True
    parent, name = os.path.split(real)
    return parent == out and (name in names.OUTPUTS or names.SHARD_RE.match(name) is not None
                              or names.TMP_RE.match(name) is not None)


def _check_own_outputs(inputs: list[Path], images_root: Path, out_dir: Path) -> None:
    """Refuse (exit 2) to run where an input or the image root is a name this run writes in --out."""
    for p in inputs:
        if _own_output(p, out_dir):
            raise InputError(p, f"is in --out {out_dir} under a name `mmdata shard` writes or replaces: "
                                "move it out first or choose another --out")
    if _own_output(images_root, out_dir):
        raise InputError(images_root, f"--images is in --out {out_dir} under a name `mmdata shard` writes or "
                                      "replaces: choose another --out")


def _os_error(e: OSError, out_dir: Path) -> WriteError:
    """A file-system error of the run as one line naming the file (the previous output is unchanged)."""
    where = e.filename or out_dir
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WriteError(where, f"{e.strerror} (disk full or over a file size limit): free space or choose "
                                 "another --out; the previous output is unchanged")
    return WriteError(where, f"{e.strerror or e}")


def write_shards(inputs: list[str | Path] | str | Path, images_root: str | Path, out_dir: str | Path,
                 **kw: Any) -> ShardReport:
    """Shard cleaned conversation files into ``out_dir`` (see ``_write_shards``). Inputs on object
    storage (``s3://``) are first copied to a temporary folder under their own base names (the
    manifest names inputs by base name, so the output does not change)."""
    with _local_inputs([inputs] if isinstance(inputs, (str, Path)) else list(inputs)) as local:
        return _write_shards(local, images_root, out_dir, **kw)


@contextlib.contextmanager
def _local_inputs(inputs: list[str | Path]) -> Iterator[list[str | Path]]:
    remote = [p for p in inputs if storage.is_remote(p)]
    if not remote:
        yield inputs
        return
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="mmdata-inputs-"))
    try:
        out: list[str | Path] = []
        for i, p in enumerate(inputs):
            if not storage.is_remote(p):
                out.append(p)
                continue
            url = os.fspath(p)
            if not storage.exists(url) or storage.isdir(url):
                raise InputError(url, "no such file")
            dst = tmp / str(i) / url.rstrip("/").rsplit("/", 1)[-1]
            dst.parent.mkdir()
            with storage.open_input(url) as src, open(dst, "wb") as f:
                shutil.copyfileobj(src, f, 8 << 20)
            out.append(dst)
        yield out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_shards(
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
    records_per_shard: int | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> ShardReport:
    """Shard cleaned conversation files into ``out_dir`` (see docs/shard.md and CONTRACT s.3).

    Same inputs and options give byte-identical outputs whatever ``workers`` is; ``resume`` keeps
    the complete shards of a killed run and ends with the bytes an uninterrupted run gives.
    ``progress(records_done, samples, rejected)`` is called after each chunk of records.
    ``records_per_shard`` plans the shards by input records instead (``mmdata.shard.planned``): the
    only mode for ``engine="ray"`` and for an ``s3://`` ``out_dir``, and the same bytes on either.
    """
    t0 = time.perf_counter()
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    images_root = storage.as_path(images_root)  # an s3:// URL stays one (Path would collapse its '//')
    if records_per_shard is not None or engine != "local" or storage.is_remote(out_dir):
        return _write_planned(inputs, images_root, os.fspath(out_dir), t0, max_res=max_res,
                              max_image_tokens=max_image_tokens, rule=rule, samples_per_shard=samples_per_shard,
                              max_shard_bytes=max_shard_bytes, quality=quality, workers=workers, resume=resume,
                              tokenizer=tokenizer, template=template, progress=progress,
                              records_per_shard=records_per_shard, engine=engine, ray_address=ray_address)
    out_dir = Path(out_dir)
    spec = ResizeSpec(rule=rule, max_res=max_res, max_image_tokens=max_image_tokens, quality=quality)
    _check_options(inputs, images_root, spec, samples_per_shard, max_shard_bytes, quality)
    workers = resolve_workers(workers)
    tok_sha = _tokenizer_sha(tokenizer, template)
    header = _run_header(inputs, spec, samples_per_shard, max_shard_bytes, tok_sha, template)
    options, hashes = header["options"], header["input_sha256"]

    _check_own_outputs(inputs, images_root, out_dir)
    _make_out_dir(out_dir)
    with hold_lock(out_dir):
        if resume and not (out_dir / names.STAGING / names.JOURNAL).exists():
            done = _finished_run(out_dir, inputs, options, hashes)
            if done is not None:  # a finished folder: nothing to do, nothing rewritten
                done.seconds = time.perf_counter() - t0
                return done
        sw = ShardWriter(out_dir, header, samples_per_shard=samples_per_shard, max_shard_bytes=max_shard_bytes,
                         with_text_tokens=tok_sha is not None)
        init_args = (str(images_root), spec, None if tokenizer is None else str(tokenizer), template)
        report = _run(sw, resume, inputs, workers, init_args, progress,
                      lambda old: _check_same_run(out_dir, inputs, old, options, hashes))
    report.seconds = time.perf_counter() - t0
    return report


def _run(sw: ShardWriter, resume: bool, inputs: list[Path], workers: int, init_args: tuple,
         progress: Callable[[int, int, int], None] | None, check_header: Callable[[dict], None]) -> ShardReport:
    """Start (or resume) ``sw``, feed it every record, finish. On a user error (bad input, full disk)
    nothing of the run is left; on an interrupt or crash the staged shards stay for ``--resume``."""
    try:
        start = sw.start(resume, check_header)  # refusing a resume changes nothing
    except OSError as e:
        raise _os_error(e, sw.out_dir) from None
    try:
        report = ShardReport(out_dir=sw.out_dir, text_tokens=sw.with_text_tokens, resumed_shards=sw.resumed,
                             records=sum(s.samples for s in sw.shards) + len(sw.rejects))
        _feed(sw, report, inputs, start, workers, init_args, progress)
        manifest = sw.finish()
    except MMDataError:
        sw.abort(keep_for_resume=False)
        raise
    except OSError as e:
        sw.abort(keep_for_resume=False)
        raise _os_error(e, sw.out_dir) from None
    except BaseException:
        sw.abort(keep_for_resume=True)
        raise
    report.samples, report.rejected = manifest["samples"], manifest["rejected"]
    report.images, report.image_tokens = manifest["images"], manifest["image_tokens"]
    report.passthrough, report.reasons = manifest["passthrough_images"], manifest["reject_reasons"]
    report.shards = list(sw.shards)
    report.bytes = sum(s.bytes for s in report.shards)
    return report


def _write_planned(inputs: list[Path], images_root: Path, out: str, t0: float, *, max_res: int, max_image_tokens: int,
                   rule: str, samples_per_shard: int | None, max_shard_bytes: int, quality: int, workers: int | None,
                   resume: bool, tokenizer: str | Path | None, template: str,
                   progress: Callable[[int, int, int], None] | None, records_per_shard: int | None, engine: str,
                   ray_address: str | None) -> ShardReport:
    """``write_shards`` with planned membership (``--records-per-shard``) on ``--engine local|ray``."""
    from mmdata.engine import open_engine
    from mmdata.shard.planned import write_planned_shards

    if records_per_shard is None:
        why = f"--engine {engine}" if engine != "local" else f"--out {out} (object storage)"
        raise InputError(None, f"{why} needs --records-per-shard N: shards are then planned by input records, so "
                               "any engine and any storage give the same bytes (the same flag locally gives them too)")
    if samples_per_shard is not None:
        raise InputError(None, "--samples-per-shard does not apply with --records-per-shard (a shard holds the "
                               "samples of N input records)")
    spec = ResizeSpec(rule=rule, max_res=max_res, max_image_tokens=max_image_tokens, quality=quality)
    _check_options(inputs, images_root, spec, None, max_shard_bytes, quality)
    tok_sha = _tokenizer_sha(tokenizer, template)
    header = _run_header(inputs, spec, None, max_shard_bytes, tok_sha, template)
    header["options"]["records_per_shard"] = records_per_shard
    header["options"].pop("max_shard_bytes", None)  # not used: membership is by records
    lock = hold_output_lock(out)  # s3://: a lease on PREFIX/.mmdata-shard.lock (a local folder: flock, below)
    if not storage.is_remote(out):
        _check_own_outputs(inputs, images_root, Path(out))
        _make_out_dir(Path(out))
        lock = hold_lock(Path(out))
    with lock, open_engine(engine, workers=workers, ray_address=ray_address) as eng:
        manifest, kept, _ = write_planned_shards(
            inputs, images_root, out, spec=spec, records_per_shard=records_per_shard, header=header,
            tokenizer=None if tokenizer is None else str(tokenizer), template=template, resume=resume,
            engine=eng, progress=progress)
    shards = [ShardInfo(**s) for s in manifest["shards"]]
    return ShardReport(
        out_dir=out if storage.is_remote(out) else Path(out), records=manifest["samples"] + manifest["rejected"],
        samples=manifest["samples"], rejected=manifest["rejected"], images=manifest["images"],
        passthrough=manifest["passthrough_images"], image_tokens=manifest["image_tokens"],
        bytes=sum(s.bytes for s in shards), shards=shards, reasons=dict(manifest["reject_reasons"]),
        resumed_shards=kept, seconds=time.perf_counter() - t0, text_tokens=tok_sha is not None)
