"""Planned shards (``--records-per-shard N``): membership and keys fixed before any image is made.

Shard ``k`` holds the samples of input records ``k*N .. k*N+N-1`` (in input order, across all input
files); a sample's key is its record's position in that order, so keys and shard boundaries depend
only on the inputs and options, never on which engine, worker or node makes a shard (img2dataset's
scheme). A shard holds fewer than N samples where records are rejected; keys then have gaps.

Each shard is one job, run by any engine (``mmdata.engine``): it makes its samples, writes its tar
straight to the output storage (``storage.atomic_output``: on S3 a multipart upload completed last),
then a small done-record ``.shard-NNNNNN.done.json`` (its index rows, rejects and sha256), and returns
that record. The driver writes index, rejects and manifest last and then removes the done-records,
so the finished folder is the same on a local disk and on S3. ``--resume`` skips every job whose
done-record and tar are there; a job lost with its worker is simply run again (same bytes).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mmdata import storage
from mmdata.errors import InputError
from mmdata.format import names, tar
from mmdata.format.index import IndexColumns, to_table, write_index
from mmdata.format.manifest import ShardInfo, build_manifest, write_manifest
from mmdata.format.writer import sample_members
from mmdata.io import iter_json_records
from mmdata.shard.resize import ResizeSpec
from mmdata.shard.sample import Reject, Task

__all__ = ["ShardJob", "run_job", "plan_jobs", "write_planned_shards", "done_name"]

KEY_DIGITS = 9


def done_name(number: int) -> str:
    """The done-record of shard ``number`` (removed when the manifest is written)."""
    return f".shard-{number:06d}.done.json"


@dataclass(frozen=True)
class ShardJob:
    """One planned shard: its number, first record position and records, and what to make them with."""

    number: int
    first: int  # global position (over all inputs) of tasks[0]
    tasks: tuple[Task, ...]
    inputs: tuple[str, ...]  # input base names (rejects name them)
    out: str
    init: tuple  # (images_root, spec, tokenizer, template) for shard.writer._init_worker
    with_text_tokens: bool


_WORKER_INIT: tuple | None = None


def _ensure_worker(init: tuple) -> None:
    """Set up this process's sample maker (and tokenizer) once per distinct ``init``."""
    global _WORKER_INIT
    if _WORKER_INIT != init:
        from mmdata.shard.writer import _init_worker

        _init_worker(*init)
        _WORKER_INIT = init


def _existing_done(job: ShardJob) -> dict | None:
    """The done-record of a shard a previous run finished (its tar present at the recorded size)."""
    done = storage.join(job.out, done_name(job.number))
    if not storage.exists(done):
        return None
    try:
        rec = orjson.loads(storage.read_bytes(done))
        tar_url = storage.join(job.out, names.shard_name(job.number))
        if rec.get("first") == job.first and storage.exists(tar_url) and storage.size(tar_url) == rec["shard"]["bytes"]:
            rec["resumed"] = True
            return rec
    except (orjson.JSONDecodeError, KeyError, TypeError, FileNotFoundError):
        pass
    return None


def run_job(job: ShardJob) -> dict:
    """Make, write and record one shard (on any worker); skipped when a previous run finished it."""
    found = _existing_done(job)
    if found is not None:
        return found
    _ensure_worker(job.init)
    from mmdata.shard.writer import _run_chunk

    results = _run_chunk(list(job.tasks))
    name = names.shard_name(job.number)
    cols = IndexColumns(job.with_text_tokens)
    rejects: list[dict] = []
    sha = hashlib.sha256()
    size = samples = passthrough = images = image_tokens = 0
    first_key = last_key = ""
    with storage.atomic_output(storage.join(job.out, name)) as f:
        for pos, (task, res) in enumerate(zip(job.tasks, results), start=job.first):
            if isinstance(res, Reject):
                rejects.append({"index": task.index, "id": res.id, "reason": res.reason, "detail": res.detail,
                                "input": job.inputs[task.file_idx], "record": task.record})
                continue
            key = f"{pos:0{KEY_DIGITS}d}"
            data = tar.sample_bytes(sample_members(key, res))
            f.write(data)
            sha.update(data)
            for col, v in (("key", key), ("shard", name), ("shard_idx", job.number), ("offset", size),
                           ("nbytes", len(data)), ("id", res.id), ("n_images", len(res.images)),
                           ("image_tokens", sum(res.image_tokens)), ("image_tokens_list", res.image_tokens),
                           ("widths", res.widths), ("heights", res.heights), ("text_chars", res.text_chars),
                           ("n_turns", res.n_turns), ("source", res.source)):
                cols[col].append(v)
            if job.with_text_tokens:
                cols["text_tokens"].append(res.text_tokens)
            size += len(data)
            samples += 1
            passthrough += res.passthrough
            images += len(res.images)
            image_tokens += sum(res.image_tokens)
            first_key = first_key or key
            last_key = key
        end = tar.end_of_archive(size)
        f.write(end)
        sha.update(end)
        size += len(end)
    info = ShardInfo(name, samples, size, sha.hexdigest(), first_key, last_key)
    rec = {"first": job.first, "shard": info.__dict__, "rows": dict(cols), "rejects": rejects,
           "passthrough": passthrough, "images": images, "image_tokens": image_tokens}
    with storage.atomic_output(storage.join(job.out, done_name(job.number))) as f:
        f.write(orjson.dumps(rec))
    return rec


def plan_jobs(inputs: list[Path], records_per_shard: int, out: str, init: tuple,
              with_text_tokens: bool) -> Iterator[ShardJob]:
    """The shard jobs in order: every ``records_per_shard`` input records (across files) make one."""
    names_ = tuple(p.name for p in inputs)
    buf: list[Task] = []
    number = pos = 0
    for fi, path in enumerate(inputs):
        for index, line, rec in iter_json_records(path):
            buf.append(Task(fi, path.stem, index, line, rec))
            pos += 1
            if len(buf) == records_per_shard:
                yield ShardJob(number, pos - len(buf), tuple(buf), names_, out, init, with_text_tokens)
                buf, number = [], number + 1
    if buf or number == 0:
        yield ShardJob(number, pos - len(buf), tuple(buf), names_, out, init, with_text_tokens)


def _is_done_record(n: str) -> bool:
    return n.startswith(".shard-") and n.endswith(".done.json")


def _clear(out: str, resume: bool) -> None:
    """Remove what an earlier run left (temp files, index, manifest, rejects; shards and
    done-records too unless resuming), so the folder ends holding exactly this run's files."""
    for n in storage.listdir(out):
        drop = names.TMP_RE.match(n) or n in names.OUTPUTS
        if not resume:
            drop = drop or names.SHARD_RE.match(n) or _is_done_record(n)
        if drop:
            storage.remove(storage.join(out, n))


def _finish(out: str, header: dict, records: list[dict], with_text_tokens: bool) -> dict:
    """Index, rejects, manifest (the manifest last: it marks a finished run); then drop the done-records."""
    write_index(storage.join(out, names.INDEX), [to_table(r["rows"]) for r in records],
                with_text_tokens=with_text_tokens)
    rejects = [x for r in records for x in r["rejects"]]
    with storage.atomic_output(storage.join(out, names.REJECTS)) as f:
        for x in rejects:
            f.write(orjson.dumps(x) + b"\n")
    reasons: dict[str, int] = {}
    for x in rejects:
        reasons[x["reason"]] = reasons.get(x["reason"], 0) + 1
    shards = [ShardInfo(**r["shard"]) for r in records]
    manifest = build_manifest(header["options"], shards, sum(s.samples for s in shards), len(rejects),
                              sum(r["image_tokens"] for r in records), reasons,
                              sum(r["passthrough"] for r in records), sum(r["images"] for r in records),
                              input_sha256=header["input_sha256"])
    write_manifest(storage.join(out, names.MANIFEST), manifest)
    for r in records:
        storage.remove(storage.join(out, done_name(int(r["shard"]["name"][6:12]))))
    return manifest


def write_planned_shards(inputs: list[Path], images_root: Path, out: str, *, spec: ResizeSpec, records_per_shard: int,
                         header: dict, tokenizer: str | None, template: str, resume: bool, engine: Any,
                         progress: Callable[[int, int, int], None] | None = None) -> tuple[dict, int, float]:
    """Run every shard job on ``engine`` (in order) and finish the folder; returns (manifest,
    shards kept from an earlier run, seconds)."""
    t0 = time.perf_counter()
    if records_per_shard < 1:
        raise InputError(None, f"--records-per-shard must be positive, got {records_per_shard}")
    storage.makedirs(out)
    if resume and not any(_is_done_record(n) for n in storage.listdir(out)) \
            and storage.exists(storage.join(out, names.MANIFEST)):
        from mmdata.format.manifest import read_manifest

        old = read_manifest(storage.join(out, names.MANIFEST))
        if old.get("options") == header["options"] and old.get("input_sha256") == header["input_sha256"]:
            return old, len(old["shards"]), time.perf_counter() - t0
    _clear(out, resume)
    init = (str(images_root), spec, tokenizer, template)
    with_tt = "text_tokens" in header["options"]
    jobs = plan_jobs(inputs, records_per_shard, out, init, with_tt)
    records: list[dict] = []
    n_records = n_samples = n_rejected = 0
    for rec in engine.map(run_job, jobs):
        records.append(rec)
        n_samples += rec["shard"]["samples"]
        n_rejected += len(rec["rejects"])
        n_records += rec["shard"]["samples"] + len(rec["rejects"])
        if progress is not None:
            progress(n_records, n_samples, n_rejected)
    kept = sum(1 for r in records if r.get("resumed"))
    return _finish(out, header, records, with_tt), kept, time.perf_counter() - t0
