"""The shard layout: membership and keys fixed before any image is made (docs/shard.md "Layout").

Job ``k`` holds input records ``k*N .. k*N+N-1`` (in input order, across all input files; N =
``--samples-per-shard``); a sample's key is its record's position in that order, so keys and job
boundaries depend only on the inputs and options, never on the engine, worker or node (img2dataset's
scheme). Within a job, a part (tar) ends before a sample would take it past ``--max-shard-bytes``,
so a job makes 0..m parts (0 when every record is rejected). Parts are written into the staging
folder under job-relative names; their tar bytes never depend on the final name, which the driver
gives later (``mmdata.shard.finish``). After its parts, a job writes a done-record (its parts'
sizes, sha256 and index rows, its rejects), which is what ``--resume`` trusts.

A job runs whole on one worker (``run_job``: Ray), or its records are made on a process pool and
the driver writes the parts in order (``JobWriter`` fed by ``mmdata.shard.writer``): the same code
writes the bytes either way.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mmdata import storage
from mmdata.format import names, tar
from mmdata.format.index import IndexColumns
from mmdata.format.journal import sha256_file
from mmdata.format.writer import sample_members
from mmdata.io import iter_json_records
from mmdata.shard.sample import Reject, Sample, Task

__all__ = ["Job", "JobContext", "JobWriter", "run_job", "plan_jobs", "existing_done", "read_done", "read_json_or_none", "key_of",
           "KEY_DIGITS"]

KEY_DIGITS = 9
CHUNK = 16  # records per unit of per-record work


def key_of(position: int) -> str:
    """A sample's key: its record's global input position, zero-padded (no dots; unique)."""
    return f"{position:0{KEY_DIGITS}d}"


@dataclass(frozen=True)
class Job:
    """One planned job: its number, the global position of its first record, and its records."""

    number: int
    first: int
    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class JobContext:
    """What every job of a run shares (picklable: it travels to Ray workers)."""

    stage: str  # the staging folder (local path or s3:// URL)
    inputs: tuple[str, ...]  # input base names (rejects name them)
    init: tuple  # (images_root, spec, tokenizer, template) for shard.writer._init_worker
    with_text_tokens: bool
    max_shard_bytes: int


def plan_jobs(inputs: list[Path], per_job: int) -> Iterator[Job]:
    """The jobs in order: every ``per_job`` input records (across files) make one; none for no records."""
    buf: list[Task] = []
    number = pos = 0
    for fi, path in enumerate(inputs):
        for index, line, rec in iter_json_records(path):
            buf.append(Task(fi, path.stem, index, line, rec))
            pos += 1
            if len(buf) == per_job:
                yield Job(number, pos - len(buf), tuple(buf))
                buf, number = [], number + 1
    if buf:
        yield Job(number, pos - len(buf), tuple(buf))


class _Part:
    """One tar of a job being written into staging (atomic: visible only when complete)."""

    def __init__(self, url: str, name: str, with_text_tokens: bool):
        self.name = name
        self._cm = storage.atomic_output(url)
        self.f = self._cm.__enter__()
        self.sha = hashlib.sha256()
        self.size = self.samples = 0
        self.first_key = self.last_key = ""
        self.cols = IndexColumns(with_text_tokens)

    def write(self, data: bytes) -> int:
        offset = self.size
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)
        return offset

    def close(self) -> dict[str, Any]:
        self.write(tar.end_of_archive(self.size))
        self._cm.__exit__(None, None, None)
        for col in ("shard", "shard_idx"):  # the final name is the driver's: not in the part's bytes
            del self.cols[col]
        return {"name": self.name, "samples": self.samples, "bytes": self.size, "sha256": self.sha.hexdigest(),
                "first_key": self.first_key, "last_key": self.last_key, "rows": dict(self.cols)}

    def discard(self) -> None:
        with contextlib.suppress(BaseException):
            err = RuntimeError("job aborted")
            self._cm.__exit__(RuntimeError, err, None)


class JobWriter:
    """Writes one job's samples, in record order, into its parts; ``close`` writes the done-record."""

    def __init__(self, job: Job, ctx: JobContext):
        self.job, self.ctx = job, ctx
        self.parts: list[dict[str, Any]] = []
        self.rejects: list[dict[str, Any]] = []
        self.passthrough = self.images = self.image_tokens = 0
        self._part: _Part | None = None

    def add(self, task: Task, res: Sample | Reject, position: int) -> None:
        if isinstance(res, Reject):
            self.rejects.append({"index": task.index, "id": res.id, "reason": res.reason, "detail": res.detail,
                                 "input": self.ctx.inputs[task.file_idx], "record": task.record})
            return
        key = key_of(position)
        data = tar.sample_bytes(sample_members(key, res))
        # The cap holds for the finished file (end-of-archive blocks and record padding count); a
        # sample too big for any part still gets a part of its own.
        p = self._part
        if p is not None and tar.archive_size(p.size + len(data)) > self.ctx.max_shard_bytes:
            self.parts.append(p.close())
            p = self._part = None
        if p is None:
            name = names.part_name(self.job.number, len(self.parts))
            p = self._part = _Part(storage.join(self.ctx.stage, name), name, self.ctx.with_text_tokens)
        offset = p.write(data)
        self._row(p, res, key, offset, len(data))
        p.samples += 1
        p.first_key = p.first_key or key
        p.last_key = key
        self.passthrough += res.passthrough
        self.images += len(res.images)
        self.image_tokens += sum(res.image_tokens)

    def add_chunk(self, i: int, results: list[Sample | Reject]) -> None:
        """The results of the job's records ``i .. i+len(results)-1``, in order."""
        for j, res in enumerate(results):
            self.add(self.job.tasks[i + j], res, self.job.first + i + j)

    def _row(self, p: _Part, s: Sample, key: str, offset: int, nbytes: int) -> None:
        c = p.cols
        for col, v in (("key", key), ("offset", offset), ("nbytes", nbytes), ("id", s.id),
                       ("n_images", len(s.images)), ("image_tokens", sum(s.image_tokens)),
                       ("image_tokens_list", s.image_tokens), ("widths", s.widths), ("heights", s.heights),
                       ("text_chars", s.text_chars), ("n_turns", s.n_turns), ("source", s.source)):
            c[col].append(v)
        if self.ctx.with_text_tokens:
            c["text_tokens"].append(s.text_tokens)

    def close(self) -> dict[str, Any]:
        """End the open part and write the job's done-record (last: it marks the job complete)."""
        if self._part is not None:
            self.parts.append(self._part.close())
            self._part = None
        rec = {"job": self.job.number, "first": self.job.first, "records": len(self.job.tasks), "parts": self.parts,
               "rejects": self.rejects, "passthrough": self.passthrough, "images": self.images,
               "image_tokens": self.image_tokens}
        with storage.atomic_output(storage.join(self.ctx.stage, names.done_name(self.job.number))) as f:
            f.write(orjson.dumps(rec))
        return rec

    def abort(self) -> None:
        """Drop the part being written (nothing under its name); the complete parts stay for --resume."""
        if self._part is not None:
            self._part.discard()
            self._part = None


def read_json_or_none(url: str) -> dict[str, Any] | None:
    """A small JSON object the run wrote itself (done-record, run.json, manifest), or None when it is
    absent, unreadable or not an object: one read, no separate existence check."""
    try:
        d = orjson.loads(storage.read_bytes(url))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return d if isinstance(d, dict) else None


def read_done(stage: str, number: int) -> dict[str, Any] | None:
    """Job ``number``'s done-record in ``stage``, or None when absent or unreadable."""
    rec = read_json_or_none(storage.join(stage, names.done_name(number)))
    return rec if rec is not None and rec.get("job") == number else None


def _staged_size(url: str) -> int | None:
    try:
        return storage.size(url)
    except FileNotFoundError:
        return None


def existing_done(job: Job, ctx: JobContext) -> dict[str, Any] | None:
    """The done-record of a job an earlier run finished (same records; every part staged at its size)."""
    rec = read_done(ctx.stage, job.number)
    if rec is None or rec.get("first") != job.first or rec.get("records") != len(job.tasks):
        return None
    local = not storage.is_remote(ctx.stage)
    for p in rec["parts"]:
        url = storage.join(ctx.stage, p["name"])
        if _staged_size(url) != p["bytes"]:
            return None
        # A local file can be changed in place; an S3 object, once its upload completed, cannot
        # (and re-reading it all would cost the whole transfer again): sizes suffice there.
        if local and sha256_file(url) != p["sha256"]:
            return None
    rec["resumed"] = True
    return rec


def run_job(job: Job, ctx: JobContext) -> dict[str, Any]:
    """Make, write and record one whole job on this worker (skipped when an earlier run finished it)."""
    found = existing_done(job, ctx)
    if found is not None:
        return found
    from mmdata.shard import writer

    writer.ensure_worker(ctx.init)
    w = JobWriter(job, ctx)
    try:
        for i in range(0, len(job.tasks), CHUNK):
            w.add_chunk(i, writer._run_chunk(list(job.tasks[i:i + CHUNK])))
        return w.close()
    except BaseException:
        w.abort()
        raise
