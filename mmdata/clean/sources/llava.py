"""`clean llava`: LLaVA / ShareGPT / messages records -> validated conversation JSON + rejects + report.

One streaming pass in constant memory. The file is split into raw record bytes (`fastread`); worker
processes parse and normalise batches (rules 1-4) and serialise the output; the engine decides in
input order. Input the fast splitter cannot vouch for is re-read with the exact reader
(`mmdata.io.iter_json_records`), which gives the same output or a file:line:col error.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from mmdata.clean.checks import ImageChecker
from mmdata.clean.engine import (
    Decider,
    Fallback,
    Item,
    Originals,
    Progress,
    Stream,
    StructureOptions,
    check_common_args,
    check_max_text_chars,
    structure_objects,
    structure_span,
)
from mmdata.clean.fastread import NotFast, iter_spans
from mmdata.clean.handoff import Slots
from mmdata.clean.pool import ray_active, worker_pool
from mmdata.clean.remote import as_path, staged_input, one_writer
from mmdata.clean.report import CleanReport, Sink, default_paths
from mmdata.errors import InputError
from mmdata.images import DEFAULT_MAX_PIXELS
from mmdata.io import iter_json_records
from mmdata.procs import resolve_workers
from mmdata.records import DEFAULT_MAX_TEXT_CHARS

__all__ = ["clean_llava"]

_BATCH = 1000  # records per structure task
_INLINE_BYTES = 4 << 20  # inputs up to this size are parsed and checked without worker processes


@one_writer  # an s3:// OUT: one run at a time
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
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    rekey: bool = False,
    progress: Progress | None = None,
) -> CleanReport:
    """Clean a LLaVA / ShareGPT / messages file (JSON array or JSON Lines) into OUT + rejects + report.

    ``input_format``: "auto" (default; per record: ``conversations``, ``messages`` or
    ``instruction``/``output``), "llava" or "messages". ``rekey``: a repeated id becomes ``<id>-<n>``
    (counted in the report) instead of a duplicate_id reject. Raises InputError on unusable input.
    """
    input_path, images_root, out_path = as_path(input_path), as_path(images_root), as_path(out_path)
    shape = input_format or "auto"
    if shape not in ("auto", "llava", "messages"):
        raise InputError(None, f"--input-format must be auto, llava or messages (got {shape!r})")
    rejects_path, report_path = default_paths(out_path, as_path(rejects_path) if rejects_path else None,
                                              as_path(report_path) if report_path else None)
    fmt = check_common_args(images_root, out_path, [input_path], min_side, max_aspect, max_pixels, out_format,
                            (rejects_path, report_path))
    check_max_text_chars(max_text_chars)
    report = CleanReport(kind="llava", source=input_path.name, out=str(out_path), rejects=str(rejects_path),
                         report=str(report_path),
                         options={"min_side": min_side, "max_aspect": max_aspect, "max_pixels": max_pixels,
                                  "out_format": out_format, "input_format": shape, "max_text_chars": max_text_chars,
                                  "rekey": rekey})
    opts = StructureOptions(input_path.stem, shape, out_format == "messages", fmt == "json", max_text_chars)
    checks = dict(min_side=min_side, max_aspect=max_aspect, max_pixels=max_pixels)
    with staged_input(input_path) as local_input:  # an s3:// input: a local copy under the same name
        _clean(local_input, images_root, out_path, rejects_path, fmt, report, opts, checks, workers, progress, rekey)
    report.write(report_path)
    return report


def _clean(input_path: Path, images_root: Path, out_path: Path, rejects_path: Path, fmt: str, report: CleanReport,
           opts: StructureOptions, checks: dict[str, Any], workers: int | None, progress: Progress | None,
           rekey: bool) -> None:
    """The fast pass, and the exact one when the fast reader cannot vouch for the input."""
    nworkers = resolve_workers(workers)
    # A small input is parsed in this process (starting workers and moving batches costs more than it
    # saves); image checks still get a pool of their own, started only if an image is met.
    small = input_path.stat().st_size <= _INLINE_BYTES
    parallel = nworkers > 1 and not small and not ray_active()
    # made before the pool forks, so that the workers share it: batch outputs come back through it
    slots = Slots(2 * nworkers + 2) if parallel and Slots.usable() else None
    pool = worker_pool(nworkers) if parallel else None
    try:
        try:
            _run(input_path, images_root, out_path, rejects_path, fmt, report, opts, checks, pool, nworkers,
                 progress, exact=False, rekey=rekey, slots=slots)
        except (Fallback, NotFast, UnicodeDecodeError):
            report.rejected, report.by_reason = 0, dict.fromkeys(report.by_reason, 0)
            _run(input_path, images_root, out_path, rejects_path, fmt, report, opts, checks, pool, nworkers,
                 progress, exact=True, rekey=rekey)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if slots is not None:
            slots.close()


def _run(input_path: Path, images_root: Path, out_path: Path, rejects_path: Path, fmt: str, report: CleanReport,
         opts: StructureOptions, checks: dict[str, Any], pool: ProcessPoolExecutor | None, nworkers: int,
         progress: Progress | None, *, exact: bool, rekey: bool, slots: Slots | None = None) -> None:
    """One pass: the fast splitter's spans (``exact`` False) or the exact reader's objects."""
    with ImageChecker(str(images_root), workers=nworkers, pool=pool, **checks) as checker, \
            Sink(rejects_path, "jsonl") as rejects, Sink(out_path, fmt) as out:
        originals = Originals(input_path)
        dec = Decider(checker, out, rejects, report, input_path.name, originals.serialise, rekey=rekey)
        stream = Stream(dec, originals, pool, nworkers, slots)
        items = _exact_items(input_path, opts) if exact else _span_items(input_path, opts, pool, slots)
        report.input = stream.run(items, progress)
        report.written = out.count
        report.images_checked = checker.checked
        if dec.rekey:
            report.extra["rekeyed"] = dec.rekeyed
    if progress is not None:
        progress(report.input, report.images_checked)


def _span_items(input_path: Path, opts: StructureOptions, pool: ProcessPoolExecutor | None,
                slots: Slots | None) -> Iterator[Item]:
    """Spans of the input file, structured in the pool (or here when there is none); a worker leaves
    its output in a shared slot when one is free (the `Stream` gives it back once written)."""
    path = str(input_path)
    n = 0
    for span in iter_spans(input_path, _BATCH, parsed_after=True):
        if pool is None:
            yield Item(n, span, structure_span(path, span, n, opts))
        else:
            i = slots.acquire() if slots is not None else None
            slot = (slots.token, i) if i is not None else None  # type: ignore[union-attr]
            yield Item(n, span, pool.submit(structure_span, path, span, n, opts, slot))
        n += span.n


def _exact_items(input_path: Path, opts: StructureOptions) -> Iterator[Item]:
    """The exact reader's records (file:line:col errors), in batches structured here."""
    batch: list[Any] = []
    n = 0
    for _i, _line, obj in iter_json_records(input_path):
        batch.append(obj)
        if len(batch) >= _BATCH:
            yield Item(n, batch, structure_objects(batch, n, opts))
            n += len(batch)
            batch = []
    if batch:
        yield Item(n, batch, structure_objects(batch, n, opts))
