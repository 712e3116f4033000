"""One shard run on any engine and storage: staging, the --resume checks, the jobs, then ``finish``.

Everything a run writes before its end goes into ``OUTDIR/.mmdata-staging/`` (``run.json``: options
and input sha256; the jobs' parts and done-records). ``--engine local`` makes the records of the
jobs on its process pool in chunks of 16 and writes each job's parts here in order, so even one job
keeps every worker busy; other engines (Ray) run each job whole on a worker, which writes its parts
straight to the storage. Both go through ``planned.JobWriter``: the same bytes. A user error (bad
input, full disk) removes the staging folder; an interrupt or crash leaves it for ``--resume``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from mmdata import storage
from mmdata.engine.base import LocalEngine
from mmdata.errors import InputError
from mmdata.format import names
from mmdata.format.manifest import VERSION
from mmdata.shard.finish import compact, remove_stage
from mmdata.shard.sample import Reject
from mmdata.shard.planned import CHUNK, Job, JobContext, JobWriter, existing_done, plan_jobs, read_json_or_none, run_job

__all__ = ["open_stage", "run_jobs", "check_same_run"]

Progress = Callable[[int, int, int], None]


def _old_layout(where: str) -> InputError:
    return InputError(where, "--resume: this folder holds a run of the shard layout before manifest version "
                             f"{VERSION} (keys by accepted sample, shards cut by bytes); re-shard without --resume")


def check_same_run(where: str, old: dict, header: dict, inputs: list[Path]) -> None:
    """InputError (exit 2, one line) unless ``old`` (run.json or a manifest) is this layout's record of
    a run with the same options and the same input contents (sha256) as this one."""
    if old.get("version") != VERSION:
        raise _old_layout(where)
    if old.get("options") != header["options"]:
        raise InputError(where, "--resume: options or inputs differ from the run being resumed "
                                "(run again without --resume)")
    old_hashes = old.get("input_sha256")
    for i, p in enumerate(inputs):
        if not isinstance(old_hashes, list) or i >= len(old_hashes) or old_hashes[i] != header["input_sha256"][i]:
            raise InputError(p, "--resume: input changed since the run being resumed (sha256 differs); "
                                "run again without --resume")


def _complete(out: str, manifest: dict) -> bool:
    """Whether ``out`` holds exactly the files ``manifest`` lists (sizes checked, not re-hashed)."""
    listed = {s["name"]: s["bytes"] for s in manifest.get("shards", [])}
    here = set(storage.listdir(out))
    if not {names.INDEX, names.REJECTS} <= here or any(n not in here for n in listed):
        return False
    if any(names.SHARD_RE.match(n) and n not in listed for n in here):
        return False
    return all(storage.size(storage.join(out, n)) == b for n, b in listed.items())


def _resume_state(out: str, stage: str, header: dict, inputs: list[Path]) -> dict | None:
    """On --resume: the manifest of a finished identical run (nothing to do), or None (continue from
    staging, or start afresh); InputError when the folder belongs to another run or the old layout."""
    run = read_json_or_none(storage.join(stage, names.STAGE_RUN))
    if run is not None:
        check_same_run(stage, run, header, inputs)
        return None
    if storage.exists(storage.join(stage, names.JOURNAL)) or any(
            names.OLD_DONE_RE.match(n) for n in storage.listdir(out)):
        raise _old_layout(out)
    manifest = read_json_or_none(storage.join(out, names.MANIFEST))
    if manifest is None or "shards" not in manifest:
        return None
    check_same_run(out, manifest, header, inputs)
    return manifest if _complete(out, manifest) else None


def open_stage(out: str, stage: str, header: dict, inputs: list[Path], resume: bool) -> dict | None:
    """Ready the staging folder: kept as it is for --resume of the same run, else emptied and given
    this run's ``run.json``. Returns the manifest when --resume finds the run already finished."""
    if resume:
        finished = _resume_state(out, stage, header, inputs)
        if finished is not None or storage.exists(storage.join(stage, names.STAGE_RUN)):
            return finished
    remove_stage(stage)
    storage.makedirs(stage)
    with storage.atomic_output(storage.join(stage, names.STAGE_RUN)) as f:
        f.write(orjson.dumps({"version": VERSION, "options": header["options"],
                              "input_sha256": header["input_sha256"]}))
    return None


class _Tally:
    """Running counts for the progress callback."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.records = self.samples = self.rejected = 0

    def add(self, records: int, samples: int, rejected: int) -> None:
        self.records += records
        self.samples += samples
        self.rejected += rejected
        if self.progress is not None:
            self.progress(self.records, self.samples, self.rejected)

    def job(self, rec: dict) -> None:
        n = sum(p["samples"] for p in rec["parts"])
        self.add(rec["records"], n, len(rec["rejects"]))


def _make_chunk(init: tuple, item: tuple[int, int, list]) -> tuple[int, int, tuple]:
    from mmdata.shard.writer import make_chunk

    number, i, tasks = item
    return number, i, make_chunk(init, tasks)


def _local_jobs(engine: Any, jobs: Iterator[Job], ctx: JobContext, tally: _Tally) -> Iterator[dict]:
    """Done-records in job order: each job's records made on the pool in chunks, its parts written here."""
    from mmdata.shard.writer import _unwrap

    queue: deque[tuple[Job, dict | None]] = deque()

    def chunks() -> Iterator[tuple[int, int, list]]:
        for job in jobs:
            rec = existing_done(job, ctx)
            queue.append((job, rec))
            if rec is None:
                for i in range(0, len(job.tasks), CHUNK):
                    yield job.number, i, list(job.tasks[i:i + CHUNK])

    w: JobWriter | None = None
    try:
        for number, i, result in engine.map(partial(_make_chunk, ctx.init), chunks()):
            while queue[0][1] is not None:
                yield queue.popleft()[1]  # type: ignore[misc]
            job = queue[0][0]
            assert job.number == number
            w = w or JobWriter(job, ctx)
            results = _unwrap(result)
            w.add_chunk(i, results)
            if i + CHUNK >= len(job.tasks):
                queue.popleft()
                yield w.close()
                w = None
            rejected = sum(1 for r in results if isinstance(r, Reject))
            tally.add(len(results), len(results) - rejected, rejected)
        while queue:
            yield queue.popleft()[1]  # type: ignore[misc]
    except BaseException:
        if w is not None:
            w.abort()
        raise


def run_jobs(inputs: list[Path], per_job: int, ctx: JobContext, engine: Any, progress: Progress | None) -> list[dict]:
    """Every job's done-record, in job order (jobs an earlier run finished are kept, not redone)."""
    tally = _Tally(progress)
    jobs = plan_jobs(inputs, per_job)
    records: list[dict] = []
    if isinstance(engine, LocalEngine):
        for rec in _local_jobs(engine, jobs, ctx, tally):
            records.append(compact(rec))
            if rec.get("resumed"):
                tally.job(rec)
        return records
    for rec in engine.map(partial(run_job, ctx=ctx), jobs):
        records.append(compact(rec))
        tally.job(rec)
    return records
