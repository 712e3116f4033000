"""`mmdata shard`'s entry point: options, the run's header, the worker side of sample making.

``write_shards`` checks the options and inputs, takes the --out lock and hands the run to
``mmdata.shard.driver`` (one layout for every engine and storage: docs/shard.md "Layout"). The
worker side (``_init_worker``, ``_run_chunk``) turns records into samples in any process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmdata.errors import InputError, MMDataError
from mmdata import storage
from mmdata.format import names
from mmdata.format.journal import sha256_file
from mmdata.format.manifest import ShardInfo
from mmdata.format.lock import hold_lock, hold_output_lock
from mmdata.storage.base import WriteError
from mmdata.procs import die_with_parent
from mmdata.models.rules import RULES
from mmdata.shard.planned import JobContext
from mmdata.shard.resize import ResizeSpec, created_with
from mmdata.shard.sample import Sample, SampleMaker, Task
from mmdata.models.qwen2vl import DEFAULT_MAX_IMAGE_TOKENS

__all__ = ["write_shards", "ShardReport", "shard_name", "DEFAULT_SAMPLES_PER_SHARD"]

shard_name = names.shard_name
DEFAULT_SAMPLES_PER_SHARD = 1000  # records per job (docs/shard.md "Layout": why 1000)


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


def _unwrap(result: tuple) -> list:
    if result[0] == "ok":
        return result[1]
    if result[0] == "input_error":
        raise InputError(*result[1:])
    raise RuntimeError(f"a shard worker failed:\n{result[1]}")


_INIT: tuple | None = None


def ensure_worker(init: tuple) -> None:
    """Set up this process's sample maker (and tokenizer) once per distinct ``init``."""
    global _INIT
    if _INIT != init:
        _init_worker(*init)
        _INIT = init


def make_chunk(init: tuple, tasks: list[Task]) -> tuple:
    """Per-record work for a pool: the samples / rejects of ``tasks``, errors as plain tuples."""
    ensure_worker(init)
    return _run_chunk_safe(tasks)


def _run_chunk(tasks: list[Task]) -> list:
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


def _check_options(inputs: list[Path], images_root: Path, spec: ResizeSpec, samples_per_shard: int,
                   max_shard_bytes: int, quality: int) -> None:
    if spec.rule not in RULES:
        raise InputError(None, f"--rule: unknown rule {spec.rule!r}; choose one of {', '.join(RULES)}")
    if spec.max_res < 28:
        raise InputError(None, f"--max-res must be at least 28, got {spec.max_res}")
    if spec.max_image_tokens < 1:
        raise InputError(None, f"--max-image-tokens must be positive, got {spec.max_image_tokens}")
    if samples_per_shard < 1:
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


def _run_header(inputs: list[Path], spec: ResizeSpec, samples_per_shard: int, max_shard_bytes: int,
                tok_sha: str | None, template: str) -> dict[str, Any]:
    """What identifies a run: options (as the manifest records them) and the inputs' sha256."""
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
    return {"options": options, "input_sha256": hashes}


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


def _os_error(e: OSError, out_dir: str | Path) -> WriteError:
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
    """``inputs`` with each ``s3://`` one copied to a local file for the fast reader; errors name the URL."""
    for p in inputs:
        if storage.is_remote(p) and (not storage.exists(p) or storage.isdir(p)):
            raise InputError(os.fspath(p), "no such file")
    with storage.local_copies(inputs, expected="a JSON or JSON Lines file") as local:
        yield local




def _per_job(samples_per_shard: int | None, records_per_shard: int | None) -> int:
    """N, the records of one job (``--samples-per-shard``; ``--records-per-shard`` is its old name)."""
    if samples_per_shard is not None and records_per_shard is not None and samples_per_shard != records_per_shard:
        raise InputError(None, f"--samples-per-shard {samples_per_shard} and --records-per-shard {records_per_shard} "
                               "are one option (records per job): give one of them")
    n = samples_per_shard if samples_per_shard is not None else records_per_shard
    return DEFAULT_SAMPLES_PER_SHARD if n is None else n


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

    Job k takes input records [kN, (k+1)N) (N = ``samples_per_shard``, default 1000) and writes them
    as one or more shards of at most ``max_shard_bytes``; keys are record positions. The same inputs
    and options give byte-identical folders for any ``workers``, ``engine`` and storage; ``resume``
    keeps what a killed run finished and ends with the bytes of an uninterrupted run.
    ``progress(records_done, samples, rejected)`` is called as records are done.
    """
    t0 = time.perf_counter()
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    images_root = storage.as_path(images_root)  # an s3:// URL stays one (Path would collapse its '//')
    per_job = _per_job(samples_per_shard, records_per_shard)
    spec = ResizeSpec(rule=rule, max_res=max_res, max_image_tokens=max_image_tokens, quality=quality)
    _check_options(inputs, images_root, spec, per_job, max_shard_bytes, quality)
    tok_sha = _tokenizer_sha(tokenizer, template)
    header = _run_header(inputs, spec, per_job, max_shard_bytes, tok_sha, template)
    out = os.fspath(out_dir)
    if storage.is_remote(out):
        storage.makedirs(out)
        lock: Any = hold_output_lock(out)  # a lease on PREFIX/.mmdata-shard.lock (format/lock.py)
    else:
        _check_own_outputs(inputs, images_root, Path(out))
        _make_out_dir(Path(out))
        lock = hold_lock(Path(out))
    init = (str(images_root), spec, None if tokenizer is None else str(tokenizer), template)
    ctx = JobContext(storage.join(out, names.STAGING), tuple(p.name for p in inputs), init, tok_sha is not None,
                     max_shard_bytes)
    with lock:
        manifest, kept = _run(out, ctx, header, inputs, per_job, resume, engine, workers, ray_address, progress)
    shards = [ShardInfo(**s) for s in manifest["shards"]]
    return ShardReport(
        out_dir=out if storage.is_remote(out) else Path(out), records=manifest["samples"] + manifest["rejected"],
        samples=manifest["samples"], rejected=manifest["rejected"], images=manifest["images"],
        passthrough=manifest["passthrough_images"], image_tokens=manifest["image_tokens"],
        bytes=sum(s.bytes for s in shards), shards=shards, reasons=dict(manifest["reject_reasons"]),
        resumed_shards=kept, seconds=time.perf_counter() - t0, text_tokens=tok_sha is not None)


def _run(out: str, ctx: JobContext, header: dict, inputs: list[Path], per_job: int, resume: bool, engine: str,
         workers: int | None, ray_address: str | None,
         progress: Callable[[int, int, int], None] | None) -> tuple[dict, int]:
    """Stage, run the jobs, finish; returns (manifest, shards kept from an earlier run). On a user
    error (bad input, full disk) nothing of the run is left; on an interrupt or crash staging stays."""
    from mmdata.engine import open_engine
    from mmdata.shard.driver import open_stage, run_jobs
    from mmdata.shard.finish import finish, load_moving, remove_stage

    try:
        finished = open_stage(out, ctx.stage, header, inputs, resume)  # refusing a resume changes nothing
    except OSError as e:
        raise _os_error(e, out) from None
    if finished is not None:
        return finished, len(finished["shards"])
    records = load_moving(ctx.stage)
    if records is None:
        try:
            with open_engine(engine, workers=workers, ray_address=ray_address) as eng:
                records = run_jobs(inputs, per_job, ctx, eng, progress)
        except MMDataError:
            remove_stage(ctx.stage)
            raise
        except OSError as e:
            remove_stage(ctx.stage)
            raise _os_error(e, out) from None
    kept = sum(len(r["parts"]) for r in records if r.get("resumed"))
    try:
        return finish(out, ctx.stage, header, records), kept
    except OSError as e:  # staging stays: --resume completes the move
        raise _os_error(e, out) from None
