"""The driver's end of a shard run: final names, the move out of staging, index / rejects / manifest.

Final names are consecutive over (job, part) in job order, so part ``j`` of job ``k`` becomes
``shard-{(parts of jobs < k) + j:06d}.tar``: a function of the inputs and options only. The move
is idempotent (a ``moving`` marker in staging says it began), so ``--resume`` after a kill during it
completes it and ends with the bytes of an uninterrupted run. The old manifest goes first and the
new one comes last: a folder with a ``manifest.json`` is always a finished run.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from mmdata import storage
from mmdata.errors import InputError
from mmdata.format import names
from mmdata.format.index import to_table, write_index
from mmdata.format.manifest import ShardInfo, build_manifest, write_manifest
from mmdata.shard.planned import read_done

__all__ = ["finish", "remove_stage", "load_moving", "compact"]


def remove_stage(stage: str) -> None:
    """Remove the staging folder and everything in it (parts, done-records, markers, temp files)."""
    storage.remove_tree(stage)


def load_moving(stage: str) -> list[dict[str, Any]] | None:
    """The done-records of a run whose final move began (every job done), or None if it did not begin."""
    try:
        n = int(storage.read_bytes(storage.join(stage, names.STAGE_MOVING)) or b"0")
    except FileNotFoundError:
        return None
    records = [read_done(stage, k) for k in range(n)]
    if any(r is None for r in records):
        raise InputError(stage, "--resume: the staged run is incomplete (a done-record is missing); "
                                "re-shard without --resume")
    for r in records:
        compact(r)  # type: ignore[arg-type]
        r["resumed"] = True  # type: ignore[index]
    return records  # type: ignore[return-value]


def _numbered(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """Every part with its final shard number, in (job, part) order."""
    out: list[tuple[dict[str, Any], int]] = []
    for r in records:
        for p in r["parts"]:
            out.append((p, len(out)))
    return out


def _move_parts(out: str, stage: str, parts: list[tuple[dict[str, Any], int]]) -> None:
    """Move each part to its final name; a part already moved (staged copy gone, final at its size) is skipped."""
    for p, k in parts:
        src, dst = storage.join(stage, p["name"]), storage.join(out, names.shard_name(k))
        if storage.exists(src):
            storage.move(src, dst)
        elif not (storage.exists(dst) and storage.size(dst) == p["bytes"]):
            raise InputError(src, "--resume: a staged shard is missing; re-shard without --resume")


def _drop_stale(out: str, total: int) -> None:
    """Remove what an earlier run left in OUTDIR that this run does not write: shards numbered past
    ``total``, temp files, the old layout's journal and done-records."""
    for n in storage.listdir(out):
        num = names.shard_number(n)
        if (num is not None and num >= total) or names.TMP_RE.match(n) or names.OLD_DONE_RE.match(n) \
                or n == names.JOURNAL:
            storage.remove(storage.join(out, n))


def compact(rec: dict[str, Any]) -> dict[str, Any]:
    """Turn each part's index rows (lists of Python values) into an arrow table (~100 bytes a row),
    so the driver holds a whole data set's index compactly until the end; the final ``shard`` /
    ``shard_idx`` are placeholders until ``finish`` names the parts."""
    for p in rec["parts"]:
        rows = p.pop("rows", None)
        if rows is not None:
            n = len(rows["key"])
            p["table"] = to_table(dict(rows, shard=[""] * n, shard_idx=[0] * n))
    return rec


def _index_tables(parts: list[tuple[dict[str, Any], int]]) -> list:
    tables = []
    for p, k in parts:
        t = p["table"]
        for col, v, typ in (("shard", names.shard_name(k), pa.string()), ("shard_idx", k, pa.int32())):
            i = t.schema.get_field_index(col)
            t = t.set_column(i, t.schema.field(i), pa.array([v] * t.num_rows, type=typ))
        tables.append(t)
    return tables


def finish(out: str, stage: str, header: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """All jobs are done: move the parts into OUTDIR under their final names, remove the old run's
    extra files, write index, rejects and manifest (last), remove staging. Returns the manifest."""
    parts = _numbered(records)
    with storage.atomic_output(storage.join(stage, names.STAGE_MOVING)) as f:
        f.write(str(len(records)).encode())
    storage.remove(storage.join(out, names.MANIFEST))
    _move_parts(out, stage, parts)
    _drop_stale(out, len(parts))
    with_tt = "text_tokens" in header["options"]
    write_index(storage.join(out, names.INDEX), _index_tables(parts), with_text_tokens=with_tt)
    rejects = [x for r in records for x in r["rejects"]]
    with storage.atomic_output(storage.join(out, names.REJECTS)) as f:
        for x in rejects:
            f.write(orjson.dumps(x) + b"\n")
    reasons: dict[str, int] = {}
    for x in rejects:
        reasons[x["reason"]] = reasons.get(x["reason"], 0) + 1
    shards = [ShardInfo(names.shard_name(k), p["samples"], p["bytes"], p["sha256"], p["first_key"], p["last_key"])
              for p, k in parts]
    manifest = build_manifest(header["options"], shards, sum(s.samples for s in shards), len(rejects),
                              sum(r["image_tokens"] for r in records), reasons,
                              sum(r["passthrough"] for r in records), sum(r["images"] for r in records),
                              input_sha256=header["input_sha256"])
    write_manifest(storage.join(out, names.MANIFEST), manifest)
    remove_stage(stage)
    return manifest
