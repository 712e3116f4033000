"""`clean llava`: LLaVA / ShareGPT / messages records -> validated conversation JSON + rejects + report.

One streaming pass in constant memory. The file is split into raw record bytes (`fastread`); worker
processes parse and normalise batches (rules 1-4) and serialise the output; the main process hands
images to the once-per-path checker and decides (rules 5-11) and writes strictly in input order as
soon as a record's image verdicts are in. A bounded window of waiting records keeps the pool busy
without holding the input. Input the fast splitter cannot vouch for is re-read with the exact reader
(`mmdata.io.iter_json_records`), which gives the same output or a file:line:col error.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from mmdata.clean.checks import ImageChecker
from mmdata.clean.fastread import NotFast, iter_raw_batches
from mmdata.clean.report import CleanReport, Sink, default_paths, dump, out_format_of
from mmdata.errors import InputError
from mmdata.images import DEFAULT_MAX_PIXELS
from mmdata.io import iter_json_records
from mmdata.records import normalize, to_messages

__all__ = ["clean_llava", "Decider", "resolve_workers", "check_common_args", "sample_key"]

_WINDOW = 20_000  # records allowed to wait for image verdicts before the reader blocks
_BATCH = 1000  # records per structure task

Progress = Callable[[int, int], None]  # (records read, images checked)


def resolve_workers(workers: int | None) -> int:
    """``None`` / 0 -> all cores."""
    if not workers:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers < 0:
        raise InputError(None, f"--workers must be >= 1 (got {workers})")
    return workers


def check_common_args(images_root: Path, out_path: Path, inputs: list[Path], min_side: int, max_aspect: float,
                      max_pixels: int, out_format: str) -> str:
    """Validate options shared by coco and llava; returns the OUT file format (json/jsonl)."""
    if not images_root.is_dir():
        raise InputError(images_root, "no such images folder" if not images_root.exists() else "not a folder")
    fmt = out_format_of(out_path)
    for p in inputs:
        if not p.exists():
            raise InputError(p, "no such file")
        if p.is_dir():
            raise InputError(p, "is a directory, expected a JSON or JSON Lines file")
        if out_path.exists() and out_path.resolve() == p.resolve():
            raise InputError(out_path, "--out would overwrite the input")
    if min_side < 1:
        raise InputError(None, f"--min-side must be >= 1 (got {min_side})")
    if not max_aspect >= 1:
        raise InputError(None, f"--max-aspect must be >= 1 (got {max_aspect})")
    if max_pixels < 1:
        raise InputError(None, f"--max-pixels must be >= 1 (got {max_pixels})")
    if out_format not in ("llava", "messages"):
        raise InputError(None, f"--out-format must be llava or messages (got {out_format!r})")
    return fmt


def sample_key(images: list[str], roles: list[str], values: list[str]) -> bytes:
    """What duplicate_sample compares: image paths in order, roles and stripped values (128-bit digest)."""
    return hashlib.blake2b(orjson.dumps((images, roles, values)), digest_size=16).digest()


# One record after rules 1-4: (code, detail, id, images, sample key, payload). payload is the
# serialised output record when code is None, else the serialised original record.
Result = tuple


def structure_one(raw: Any, index: int, stem: str, shape: str, messages: bool) -> Result:
    """Rules 1-4 for one parsed record, with everything the ordered decision needs, serialised."""
    res = normalize(raw, f"{stem}-{index}", shape)
    if res.code is not None:
        return (res.code, res.detail, res.id, None, None, dump(raw))
    rec = to_messages(res.record) if messages else res.record
    return (None, "", res.id, res.images, sample_key(res.images, res.roles, res.values), dump(rec))


def structure_batch(raws: list[bytes], start: int, stem: str, shape: str, messages: bool) -> list[Result] | int:
    """`structure_one` over raw JSON bytes; returns the batch position of the first record orjson
    refuses instead (the caller then re-reads the file with the exact reader)."""
    loads = orjson.loads
    out = []
    for k, raw in enumerate(raws):
        try:
            obj = loads(raw)
        except orjson.JSONDecodeError:
            return k  # also a white-space-only line: the exact reader skips it and numbers the rest
        out.append(structure_one(obj, start + k, stem, shape, messages))
    return out


class Decider:
    """Rules 5-11 in input order, and the writes: the first failing image (in ``<image>`` order) decides;
    then duplicate id and duplicate sample against what was already written to OUT."""

    def __init__(self, checker: ImageChecker, out: Sink, rejects: Sink, report: CleanReport, input_name: str,
                 serialise: Callable[[Any], bytes] = dump):
        self.serialise = serialise  # original input record (as kept by the caller) -> JSON bytes
        self.checker = checker
        self.out = out
        self.rejects = rejects
        self.report = report
        self.input_name = input_name
        self.ids: set[str] = set()
        self.samples: dict[bytes, str] = {}  # sample key -> id of the record written with it

    def reject(self, index: int, rid: str, code: str, detail: str, record: bytes,
               extra: dict[str, Any] | None = None) -> None:
        """One rejects line; ``record`` is the original record, already serialised."""
        head: dict[str, Any] = {"index": index, "id": rid, "reason": code, "detail": detail, "input": self.input_name}
        if extra:
            head.update(extra)
        self.rejects.write(orjson.dumps(head)[:-1] + b',"record":' + record + b"}")
        self.report.rejected += 1
        self.report.by_reason[code] += 1

    def decide(self, index: int, rid: str, images: list[str], key: bytes, out: bytes,
               original: Any, extra: dict[str, Any] | None = None) -> bool:
        """Write ``out`` or reject ``original`` (the input record, serialised by ``self.serialise`` only
        when needed); all image verdicts must be in. True when written."""
        if images:
            cache = self.checker.cache
            for p in images:
                v = cache[p]
                if v[0] is not None:  # type: ignore[index]
                    self.reject(index, rid, v[0], v[1], self.serialise(original), extra)  # type: ignore[index]
                    return False
        if rid in self.ids:
            self.reject(index, rid, "duplicate_id", f"id {rid!r} was already written", self.serialise(original), extra)
            return False
        if key in self.samples:
            self.reject(index, rid, "duplicate_sample", f"same images and conversation as {self.samples[key]!r}",
                        self.serialise(original), extra)
            return False
        self.ids.add(rid)
        self.samples[key] = rid
        self.out.write(out)
        return True


class _Fallback(Exception):
    """The fast path met input it cannot vouch for."""


def _reserialise(raw: bytes) -> bytes:
    return dump(orjson.loads(raw))


def _exact_batches(path: Path) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for _i, _line, obj in iter_json_records(path):
        batch.append(obj)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def clean_llava(
    input_path: str | Path,
    images_root: str | Path,
    out_path: str | Path,
    *,
    rejects_path: str | Path | None = None,
    report_path: str | Path | None = None,
    min_side: int = 28,
    max_aspect: float = 200,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    out_format: str = "llava",
    input_format: str | None = None,
    progress: Progress | None = None,
) -> CleanReport:
    """Clean a LLaVA / ShareGPT / messages file (JSON array or JSON Lines) into OUT + rejects + report.

    ``input_format``: "auto" (default; per record: ``conversations``, ``messages`` or
    ``instruction``/``output``), "llava" or "messages". Raises InputError on unusable input.
    """
    input_path, images_root, out_path = Path(input_path), Path(images_root), Path(out_path)
    shape = input_format or "auto"
    if shape not in ("auto", "llava", "messages"):
        raise InputError(None, f"--input-format must be auto, llava or messages (got {shape!r})")
    fmt = check_common_args(images_root, out_path, [input_path], min_side, max_aspect, max_pixels, out_format)
    rejects_path, report_path = default_paths(out_path, Path(rejects_path) if rejects_path else None,
                                              Path(report_path) if report_path else None)
    nworkers = resolve_workers(workers)
    pool = ProcessPoolExecutor(nworkers) if nworkers > 1 else None
    try:
        args = (input_path, images_root, out_path, rejects_path, report_path, fmt, min_side, max_aspect, max_pixels,
                out_format, shape, pool, nworkers, progress)
        try:
            report = _run(*args, exact=False)
        except (_Fallback, NotFast, UnicodeDecodeError):
            report = _run(*args, exact=True)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    report.write(report_path)
    return report


def _run(input_path: Path, images_root: Path, out_path: Path, rejects_path: Path, report_path: Path, fmt: str,
         min_side: int, max_aspect: float, max_pixels: int, out_format: str, shape: str,
         pool: ProcessPoolExecutor | None, nworkers: int, progress: Progress | None, *, exact: bool) -> CleanReport:
    report = CleanReport(kind="llava", source=input_path.name, out=str(out_path), rejects=str(rejects_path),
                         report=str(report_path),
                         options={"min_side": min_side, "max_aspect": max_aspect, "max_pixels": max_pixels,
                                  "out_format": out_format, "input_format": shape})
    stem = input_path.stem
    messages = out_format == "messages"
    with ImageChecker(str(images_root), workers=nworkers, min_side=min_side, max_aspect=max_aspect,
                      max_pixels=max_pixels, pool=pool) as checker, \
            Sink(rejects_path, "jsonl") as rejects, Sink(out_path, fmt) as out:
        dec = Decider(checker, out, rejects, report, input_path.name, dump if exact else _reserialise)
        decide = dec.decide
        cache = checker.cache
        request = checker.request
        waiting: deque = deque()  # (index, rid, images, key, out_bytes, original) in input order
        tasks: deque = deque()  # (start, raws, future or results)
        n = 0

        ids, samples, append = dec.ids, dec.samples, out.append

        def consume(start: int, raws: list[Any], results: list[Result] | int) -> None:
            if type(results) is int:
                raise _Fallback(f"record {start + results} is not plain JSON")
            for k, (code, detail, rid, images, key, payload) in enumerate(results):
                if code is None and not images and not waiting and rid not in ids and key not in samples:
                    ids.add(rid)  # the common text-only case, decided inline
                    samples[key] = rid
                    append(payload)
                    continue
                index = start + k
                if code is not None:
                    if waiting:
                        waiting.append((index, rid, None, code, detail, payload))
                    else:
                        dec.reject(index, rid, code, detail, payload)
                    continue
                if images:
                    for p in images:
                        request(p)
                    if waiting or any(cache[p] is None for p in images):
                        waiting.append((index, rid, images, key, payload, raws[k]))
                        continue
                elif waiting:
                    waiting.append((index, rid, images, key, payload, raws[k]))
                    continue
                decide(index, rid, images, key, payload, raws[k])
            if waiting:
                _settle(waiting, cache, dec, checker, until=_WINDOW // 2 if len(waiting) >= _WINDOW else None)
            out.flush()

        source = _exact_batches(input_path) if exact else iter_raw_batches(input_path, _BATCH)
        for raws in source:
            start = n
            n += len(raws)
            if exact:
                tasks.append((start, raws, [structure_one(o, start + k, stem, shape, messages) for k, o in enumerate(raws)]))
            elif pool is None:
                tasks.append((start, raws, structure_batch(raws, start, stem, shape, messages)))
            else:
                tasks.append((start, raws, pool.submit(structure_batch, raws, start, stem, shape, messages)))
            while tasks and (len(tasks) > 2 * nworkers or not isinstance(tasks[0][2], Future)):
                s, r, fut = tasks.popleft()
                consume(s, r, fut.result() if isinstance(fut, Future) else fut)
            if progress is not None:
                progress(n, checker.checked)
        while tasks:
            s, r, fut = tasks.popleft()
            consume(s, r, fut.result() if isinstance(fut, Future) else fut)
        checker.drain()
        _settle(waiting, cache, dec, checker, until=0)
        report.input = n
        report.written = out.count
        report.images_checked = checker.checked
    if progress is not None:
        progress(n, report.images_checked)
    return report


def _settle(waiting: deque, cache: dict, dec: Decider, checker: ImageChecker, until: int | None) -> None:
    """Decide queued records from the head while their verdicts are in (a structural reject waits with
    ``images`` None so it keeps its place). With ``until`` set, block on the checker until fewer than
    ``until`` records wait (0: all)."""
    while waiting:
        head = waiting[0]
        images = head[2]
        if images is None:
            waiting.popleft()
            dec.reject(head[0], head[1], head[3], head[4], head[5])
            continue
        for p in images:
            if cache[p] is None:
                break
        else:
            waiting.popleft()
            dec.decide(*head)
            continue
        if until is None or len(waiting) < until:
            return
        checker.flush()
        checker.wait_some()
