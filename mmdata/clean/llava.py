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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from mmdata.clean.checks import ImageChecker
from mmdata.clean.fastread import NotFast, Span, iter_spans, read_pieces
from mmdata.clean.report import CleanReport, Sink, default_paths, dump, out_format_of
from mmdata.errors import InputError
from mmdata.images import DEFAULT_MAX_PIXELS
from mmdata.io import check_output_path, iter_json_records
from mmdata.procs import resolve_workers
from mmdata.records import normalize, to_messages

__all__ = ["Batch", "Decider", "check_common_args", "clean_llava", "frame", "resolve_workers", "sample_key",
           "structure_objects", "structure_span"]

_WINDOW = 20_000  # records allowed to wait for image verdicts before the reader blocks
_BATCH = 1000  # records per structure task
_INLINE_BYTES = 4 << 20  # inputs up to this size are parsed and checked without worker processes

Progress = Callable[[int, int], None]  # (records read, images checked)


def check_common_args(images_root: Path, out_path: Path, inputs: list[Path], min_side: int, max_aspect: float,
                      max_pixels: int, out_format: str, others: tuple[Path, ...] = ()) -> str:
    """Validate options shared by coco and llava before any work; returns the OUT file format
    (json/jsonl). Every output (OUT and ``others``: the rejects and report paths) must be writable,
    not a directory, not an input and not another output."""
    if not images_root.is_dir():
        raise InputError(images_root, "no such images folder" if not images_root.exists() else "not a folder")
    fmt = out_format_of(out_path)
    for p in inputs:
        if not p.exists():
            raise InputError(p, "no such file")
        if p.is_dir():
            raise InputError(p, "is a directory, expected a JSON or JSON Lines file")
    seen: dict[str, Path] = {}
    for o in (out_path, *others):
        try:
            check_output_path(o, tuple(inputs))
        except InputError as e:
            if e.message == "would overwrite the input":
                raise InputError(o, f"--{_flag(o, out_path, others)} would overwrite the input") from None
            raise
        real = os.path.realpath(o)
        if real in seen:
            raise InputError(o, f"--{_flag(o, out_path, others)} is the same file as {seen[real]}")
        seen[real] = o
    if min_side < 1:
        raise InputError(None, f"--min-side must be >= 1 (got {min_side})")
    if not max_aspect >= 1:
        raise InputError(None, f"--max-aspect must be >= 1 (got {max_aspect})")
    if max_pixels < 1:
        raise InputError(None, f"--max-pixels must be >= 1 (got {max_pixels})")
    if out_format not in ("llava", "messages"):
        raise InputError(None, f"--out-format must be llava or messages (got {out_format!r})")
    return fmt


def _flag(o: Path, out_path: Path, others: tuple[Path, ...]) -> str:
    return "out" if o is out_path else ("rejects" if others and o is others[0] else "report")


def sample_key(images: list[str], roles: list[str], values: list[str]) -> bytes:
    """What duplicate_sample compares: image paths in order, roles and stripped values (SHA-256, first
    128 bits: hardware-accelerated on current CPUs, twice as fast as BLAKE2 here)."""
    return hashlib.sha256(orjson.dumps((images, roles, values))).digest()[:16]


_NOKEY = bytes(16)


class Batch(NamedTuple):
    """Rules 1-4 over consecutive records, in columns (cheap to send between processes).

    ``ids[k]`` the output id; ``keys[16k:16k+16]`` the sample key; ``images[k]`` the image paths
    (``images`` None when no record of the batch has any); ``out[ends[k-1]:ends[k]]`` the framed output
    record (empty for a reject); ``rejects`` maps k -> (code, detail, serialised original record).
    """

    ids: list[str]
    keys: bytes
    images: list[list[str]] | None
    out: bytes
    ends: list[int]
    rejects: dict[int, tuple[str, str, bytes]]


def frame(data: bytes, json_array: bool) -> bytes:
    """A serialised record as it goes into OUT: ``,\\n`` before it in a JSON array (the Sink drops
    the first one), a newline after it in JSON Lines."""
    return b",\n" + data if json_array else data + b"\n"


def structure_objects(objs: Iterable[Any], first: int, stem: str, shape: str, messages: bool, json_array: bool) -> Batch:
    """Rules 1-4 for parsed records ``first``, ``first + 1``, ...: everything the ordered decision needs.

    ``objs`` may be a generator that parses as it goes (each record is handled while its objects are
    still in the CPU cache: parsing all first and checking after is twice as slow)."""
    ids: list[str] = []
    keys: list[bytes] = []
    images: list[list[str]] = []
    parts: list[bytes] = []
    ends: list[int] = []
    rejects: dict[int, tuple[str, str, bytes]] = {}
    size = 0
    any_images = False
    sha256, dumps = hashlib.sha256, orjson.dumps
    sep = b",\n" if json_array else b"\n"  # framing (see `frame`) as its own part: no copy of the record
    add = parts.append
    for k, raw in enumerate(objs):
        code, detail, rid, rec, imgs, roles, values = normalize(raw, f"{stem}-{first + k}", shape)
        ids.append(rid)
        images.append(imgs)
        if code is not None:
            rejects[k] = (code, detail, dump(raw))
            keys.append(_NOKEY)
        else:
            try:
                data = dumps(to_messages(rec) if messages else rec)
            except TypeError:  # what orjson refuses (see `dump`)
                data = dump(to_messages(rec) if messages else rec)
            if json_array:
                add(sep)
                add(data)
            else:
                add(data)
                add(sep)
            size += len(data) + len(sep)
            keys.append(sha256(dumps((imgs, roles, values))).digest()[:16])  # = sample_key
            if imgs:
                any_images = True
        ends.append(size)
    return Batch(ids, b"".join(keys), images if any_images else None, b"".join(parts), ends, rejects)


def structure_span(path: str, span: Span, first: int, stem: str, shape: str, messages: bool,
                   json_array: bool) -> Batch | int:
    """Read and parse the records of ``span`` (a worker task) and apply `structure_objects`. Returns
    the span position of the first record orjson refuses instead (the caller then re-reads the file
    with the exact reader): invalid JSON, NaN, huge integers, a white-space-only line."""
    pieces = read_pieces(path, span)
    if len(pieces) != span.n:
        return 0
    parsed = map(orjson.loads, pieces)
    try:
        return structure_objects(parsed, first, stem, shape, messages, json_array)
    except orjson.JSONDecodeError:
        return 0  # the position is found again by the exact reader


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

    def duplicate(self, rid: str, key: bytes) -> tuple[str, str]:
        """(code, detail) for a record whose id or sample key was already written."""
        if rid in self.ids:
            return "duplicate_id", f"id {rid!r} was already written"
        return "duplicate_sample", f"same images and conversation as {self.samples[key]!r}"

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
        if rid in self.ids or key in self.samples:
            self.reject(index, rid, *self.duplicate(rid, key), self.serialise(original), extra)
            return False
        self.ids.add(rid)
        self.samples[key] = rid
        self.out.write_block(out, 1)
        return True


class _Fallback(Exception):
    """The fast path met input it cannot vouch for."""


class _Originals:
    """The original input record of a later-rejected record, found again on demand: parsed objects
    (exact path) are kept per batch; raw bytes (fast path) are re-read from the file per span."""

    def __init__(self, path: Path):
        self.path = str(path)
        self._spans: dict[int, list[bytes]] = {}

    def serialise(self, ref: Any) -> bytes:
        if type(ref) is tuple:  # (span, k): fast path
            span, k = ref
            pieces = self._spans.get(span.offset)
            if pieces is None:
                if len(self._spans) > 64:
                    self._spans.clear()
                pieces = self._spans[span.offset] = read_pieces(self.path, span)
            return dump(orjson.loads(pieces[k]))
        return dump(ref)


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
    rejects_path, report_path = default_paths(out_path, Path(rejects_path) if rejects_path else None,
                                              Path(report_path) if report_path else None)
    fmt = check_common_args(images_root, out_path, [input_path], min_side, max_aspect, max_pixels, out_format,
                            (rejects_path, report_path))
    nworkers = resolve_workers(workers)
    # A small input is parsed in this process (starting workers and moving batches costs more than it
    # saves); image checks still get a pool of their own, started only if an image is met.
    small = input_path.stat().st_size <= _INLINE_BYTES
    pool = ProcessPoolExecutor(nworkers) if nworkers > 1 and not small else None
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
    json_array = fmt == "json"
    originals = _Originals(input_path)
    with ImageChecker(str(images_root), workers=nworkers, min_side=min_side, max_aspect=max_aspect,
                      max_pixels=max_pixels, pool=pool) as checker, \
            Sink(rejects_path, "jsonl") as rejects, Sink(out_path, fmt) as out:
        dec = Decider(checker, out, rejects, report, input_path.name, originals.serialise)
        cache = checker.cache
        request = checker.request
        ids, samples, write_block = dec.ids, dec.samples, out.write_block
        waiting: deque = deque()  # (index, rid, images, key, framed out, original ref) in input order
        tasks: deque = deque()  # (first index, span or objects, future or Batch)

        def consume(first: int, src: Any, b: Batch | int) -> None:
            if type(b) is int:
                raise _Fallback(f"record {first + b} is not plain JSON")
            bids, bkeys, bimages, bout, bends, brej = b
            if bimages is None and not waiting:
                # No image to wait for: decide here. The usual batch (no reject, no repeat) is checked
                # and recorded with set operations and written as one block; otherwise runs of passes
                # are written as blocks (a reject has no bytes in ``bout``; only a duplicate ends a run).
                m = len(bids)
                if not brej:
                    klist = [bkeys[i:i + 16] for i in range(0, 16 * m, 16)]
                    if ids.isdisjoint(bids) and samples.keys().isdisjoint(klist) and len(set(bids)) == m \
                            and len(set(klist)) == m:
                        ids.update(bids)
                        samples.update(zip(klist, bids))
                        write_block(bout, m)
                        return
                bout = memoryview(bout)
                run_at, run_n = 0, 0
                for k, rid in enumerate(bids):
                    if k in brej:
                        code, detail, orig = brej[k]
                        dec.reject(first + k, rid, code, detail, orig)
                        continue
                    key = bkeys[16 * k:16 * k + 16]
                    if rid not in ids and key not in samples:
                        ids.add(rid)
                        samples[key] = rid
                        run_n += 1
                        continue
                    start = bends[k - 1] if k else 0
                    if run_n:
                        write_block(bout[run_at:start], run_n)
                    dec.reject(first + k, rid, *dec.duplicate(rid, key), originals.serialise(src[k] if exact else (src, k)))
                    run_at, run_n = bends[k], 0
                if run_n:
                    write_block(bout[run_at:], run_n)
                return
            for k, rid in enumerate(bids):
                index = first + k
                if k in brej:
                    code, detail, orig = brej[k]
                    if waiting:
                        waiting.append((index, rid, None, code, detail, orig))
                    else:
                        dec.reject(index, rid, code, detail, orig)
                    continue
                imgs = bimages[k] if bimages is not None else ()
                key = bkeys[16 * k:16 * k + 16]
                payload = bout[bends[k - 1] if k else 0:bends[k]]
                ref = src[k] if exact else (src, k)
                if imgs:
                    for p in imgs:
                        request(p)
                    if waiting or any(cache[p] is None for p in imgs):
                        waiting.append((index, rid, imgs, key, payload, ref))
                        continue
                elif waiting:
                    waiting.append((index, rid, imgs, key, payload, ref))
                    continue
                dec.decide(index, rid, imgs, key, payload, ref)
            if waiting:
                _settle(waiting, cache, dec, checker, until=_WINDOW // 2 if len(waiting) >= _WINDOW else None)

        n = 0
        path = str(input_path)
        if exact:
            for objs in _exact_batches(input_path):
                consume(n, objs, structure_objects(objs, n, stem, shape, messages, json_array))
                n += len(objs)
                if progress is not None:
                    progress(n, checker.checked)
        else:
            for span in iter_spans(input_path, _BATCH):
                if pool is None:
                    tasks.append((n, span, structure_span(path, span, n, stem, shape, messages, json_array)))
                else:
                    tasks.append((n, span, pool.submit(structure_span, path, span, n, stem, shape, messages, json_array)))
                n += span.n
                while tasks and (len(tasks) > 2 * nworkers or not isinstance(tasks[0][2], Future)):
                    f, src, fut = tasks.popleft()
                    consume(f, src, fut.result() if isinstance(fut, Future) else fut)
                if progress is not None:
                    progress(n, checker.checked)
            while tasks:
                f, src, fut = tasks.popleft()
                consume(f, src, fut.result() if isinstance(fut, Future) else fut)
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
