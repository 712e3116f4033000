"""`clean llava`: LLaVA / ShareGPT / messages records -> validated conversation JSON + rejects + report.

One streaming pass in constant memory: each record is normalised (rules 1-4) as it is read, its
images are handed to the parallel checker, and records are decided (rules 5-11) and written strictly
in input order as soon as the verdicts of their images are in. A bounded window of waiting records
keeps the pool busy without holding the whole input.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from pathlib import Path
from typing import Any, Callable

import orjson

from mmdata.clean.checks import ImageChecker
from mmdata.clean.report import CleanReport, Sink, default_paths, dump, out_format_of
from mmdata.errors import InputError
from mmdata.images import DEFAULT_MAX_PIXELS
from mmdata.io import iter_json_records
from mmdata.records import normalize, to_messages

__all__ = ["clean_llava", "Decider", "resolve_workers", "check_common_args"]

_WINDOW = 20_000  # records allowed to wait for image verdicts before the reader blocks

Progress = Callable[[int, int], None]  # (records decided, images checked)


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


class Decider:
    """Rules 5-11 in input order, and the writes: the first failing image (in ``<image>`` order) decides;
    then duplicate id and duplicate sample against what was already written to OUT."""

    def __init__(self, checker: ImageChecker, out: Sink, rejects: Sink, report: CleanReport, input_name: str,
                 out_format: str):
        self.checker = checker
        self.out = out
        self.rejects = rejects
        self.report = report
        self.input_name = input_name
        self.messages = out_format == "messages"
        self.ids: set[str] = set()
        self.samples: set[bytes] = set()

    def reject(self, index: int, rid: str, code: str, detail: str, raw: Any, extra: dict[str, Any] | None = None) -> None:
        line: dict[str, Any] = {"index": index, "id": rid, "reason": code, "detail": detail, "input": self.input_name}
        if extra:
            line.update(extra)
        line["record"] = raw
        self.rejects.write(dump(line))
        self.report.rejected += 1
        self.report.by_reason[code] += 1

    def decide(self, index: int, rid: str, rec: dict[str, Any], images: list[str], turns: list, raw: Any,
               extra: dict[str, Any] | None = None) -> bool:
        """Write ``rec`` or reject ``raw``; all image verdicts must be in. True when written."""
        cache = self.checker.cache
        for p in images:
            v = cache[p]
            if v[0] is not None:  # type: ignore[index]
                self.reject(index, rid, v[0], v[1], raw, extra)  # type: ignore[index]
                return False
        if rid in self.ids:
            self.reject(index, rid, "duplicate_id", f"id {rid!r} was already written", raw, extra)
            return False
        key = hashlib.blake2b(orjson.dumps((images, turns)), digest_size=16).digest()
        if key in self.samples:
            self.reject(index, rid, "duplicate_sample", "same images and conversation as an earlier record", raw, extra)
            return False
        self.ids.add(rid)
        self.samples.add(key)
        self.out.write(dump(to_messages(rec) if self.messages else rec))
        self.report.written += 1
        return True


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
    report = CleanReport(kind="llava", source=input_path.name, out=str(out_path), rejects=str(rejects_path),
                         report=str(report_path),
                         options={"min_side": min_side, "max_aspect": max_aspect, "max_pixels": max_pixels,
                                  "out_format": out_format, "input_format": shape})
    stem = input_path.stem
    images_done = [0]

    def on_images(n: int) -> None:
        images_done[0] = n

    with ImageChecker(str(images_root), workers=nworkers, min_side=min_side, max_aspect=max_aspect,
                      max_pixels=max_pixels, on_done=on_images) as checker, \
            Sink(rejects_path, "jsonl") as rejects, Sink(out_path, fmt) as out:
        dec = Decider(checker, out, rejects, report, input_path.name, out_format)
        cache = checker.cache
        request = checker.request
        waiting: deque = deque()  # (index, rid, rec, images, turns, raw) in input order

        n = 0
        for index, _line, raw in iter_json_records(input_path):
            n += 1
            res = normalize(raw, f"{stem}-{index}", shape)
            if res.code is not None:
                if waiting:
                    waiting.append((index, res.id, None, None, res.code, res.detail, raw))
                else:
                    dec.reject(index, res.id, res.code, res.detail, raw)
            else:
                imgs = res.images
                for p in imgs:
                    request(p)
                if waiting or any(cache[p] is None for p in imgs):
                    waiting.append((index, res.id, res.record, imgs, res.turns, raw))
                else:
                    dec.decide(index, res.id, res.record, imgs, res.turns, raw)
            if waiting:
                _settle(waiting, cache, dec, checker, until=_WINDOW // 2 if len(waiting) >= _WINDOW else None)
            if progress is not None and not n & 1023:
                progress(n, images_done[0])
        checker.drain()
        _settle(waiting, cache, dec, checker, until=0)
        report.input = n
        report.images_checked = checker.checked
    if progress is not None:
        progress(n, images_done[0])
    report.write(report_path)
    return report


def _settle(waiting: deque, cache: dict, dec: Decider, checker: ImageChecker, until: int | None) -> None:
    """Decide queued records from the head while their verdicts are in. A structural reject waits
    in the queue as a 7-tuple so it keeps its place. With ``until`` set, block on the checker until
    fewer than ``until`` records wait (0: all)."""
    while waiting:
        head = waiting[0]
        if len(head) == 7:
            waiting.popleft()
            dec.reject(head[0], head[1], head[4], head[5], head[6])
            continue
        for p in head[3]:
            if cache[p] is None:
                break
        else:
            waiting.popleft()
            dec.decide(*head)
            continue
        if until is None or len(waiting) < until or (until == 0 and not waiting):
            return
        checker.flush()
        checker.wait_some()
