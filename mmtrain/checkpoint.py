"""Atomic checkpoints in Megatron's layout, full (`torch`) or sharded (`torch_dcp`).

`DIR/iter_0000010/{state.json, loader_rank000.pt, rng_rank000.pt, ...}` plus either `model.pt` +
`optim.pt` (format `torch`: full tensors written by rank 0; under FSDP2 gathered there first) or
`dcp/` (format `torch_dcp`: torch.distributed.checkpoint, every rank writes its own shards, no rank
ever holds the full model; readable on any number of ranks). Every rank writes into
`DIR/.iter_0000010.tmp/`; only when every rank succeeded does rank 0 rename the folder into place and
update `DIR/latest_checkpointed_iteration.txt`, so a crash or a full disk leaves the previous
checkpoint as the latest one and never a half-written folder under a final name.

On object storage (`s3://bucket/prefix`) there is no rename: every file is written straight under its
final name through the storage seam (`mmdata.storage.atomic_output`: an object appears only when its
upload completed), DCP through `mmtrain.dcp_storage`; once every rank reported its files complete, rank
0 writes `state.json` and then the tracker, the commit. A reader follows only the tracker, so it never
sees an iteration whose files are incomplete; a failed save removes what it wrote, and a save killed
midway leaves objects under an iteration no tracker names, which the next save of it removes first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mmdata import storage
from mmdata.errors import InputError
from mmdata.io import atomic_write
from mmtrain.preflight import free_bytes, human

TRACKER = "latest_checkpointed_iteration.txt"
DCP_DIR = "dcp"
FORMATS = ("torch", "torch_dcp")


def iter_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def _at(root: str | Path, *parts: str) -> Any:
    """`root/parts` as a Path for a local root, as a url string for object storage (Path would fold '//')."""
    return storage.join(str(root), *parts) if storage.is_remote(root) else Path(root).joinpath(*parts)


def resolve_format(args: Any) -> str:
    """--ckpt-format, defaulting to sharded (`torch_dcp`) under FSDP2 and full (`torch`) otherwise."""
    fmt = getattr(args, "ckpt_format", None)
    sharded = args.fsdp or getattr(args, "tensor_model_parallel_size", 1) > 1
    return fmt or ("torch_dcp" if sharded else "torch")


def _save(obj: Any, path: str | Path) -> None:
    with atomic_write(path) as f:
        torch.save(obj, f)


def rng_state() -> dict:
    """Python, numpy and torch (and accelerator) generator states of this process."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ model states


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def full_states(wrapped: torch.nn.Module, model: torch.nn.Module, opt: torch.optim.Optimizer,
                fsdp: bool) -> tuple[dict, dict]:
    """Model and optimizer state as plain full tensors on the host (collective under FSDP2)."""
    sharded = fsdp or any(hasattr(p, "full_tensor") for p in model.parameters())  # FSDP2 or TP DTensors
    if sharded and _distributed():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(wrapped, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict(), opt.state_dict()


def _sharded_states(wrapped: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """{"model", "optim"} with each rank's own shards (DTensors under FSDP2, plain tensors otherwise)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(wrapped, opt)
    return {"model": msd, "optim": osd}


def _dcp_kw() -> dict:
    return {} if _distributed() else {"no_dist": True}


@contextlib.contextmanager
def _quiet_dcp():
    """DCP warns that it runs in one process each time it is told so (no_dist); that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _write_model(d: str | Path, fmt: str, wrapped, model, opt, fsdp: bool, rank: int) -> None:
    """Collective: the model and optimizer into `d` (a folder or a url) in format `fmt`."""
    if fmt == "torch_dcp":
        import torch.distributed.checkpoint as dcp

        where = _at(d, DCP_DIR)
        io_kw = {"storage_writer": _dcp_writer(where)} if storage.is_remote(d) else {"checkpoint_id": str(where)}
        with _quiet_dcp():
            dcp.save(_sharded_states(wrapped, opt), **io_kw, **_dcp_kw())
        return
    msd, osd = full_states(wrapped, model, opt, fsdp)
    if rank == 0:
        _save(msd, _at(d, "model.pt"))
        _save(osd, _at(d, "optim.pt"))


def _dcp_writer(url: str) -> Any:
    from mmtrain.dcp_storage import SeamWriter

    return SeamWriter(url)


def _dcp_reader(where: str | Path) -> Any:
    """DCP's reader of a checkpoint's `dcp/`: the plain file-system one locally, the seam's on object storage."""
    if storage.is_remote(where):
        from mmtrain.dcp_storage import SeamReader

        return SeamReader(str(where))
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemReader(str(where))


def _reason(e: BaseException) -> str:
    """One line for an exception; for DCP's CheckpointException, the first rank's own error."""
    failures = getattr(e, "failures", None)
    if failures:
        rank, wrapped = next(iter(failures.items()))
        inner = getattr(wrapped, "exc", wrapped)
        return f"rank {rank}: {_reason(inner)}"
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return f"{type(e).__name__}: {msg}".splitlines()[0][:300]


def _gather_errors(err: str | None) -> list[str]:
    """Every rank's write error (None where it succeeded), so all ranks agree to commit or not."""
    if not _distributed():
        return [err] if err else []
    out: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(out, err)
    return [e for e in out if e]


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _commit(root: Path, tmp: Path, final: Path, iteration: int) -> None:
    """Rank 0: move the complete folder into place (replacing a same-iteration one), then the tracker."""
    if final.exists():
        old = root / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    with atomic_write(root / TRACKER, "w", encoding="utf-8") as f:
        f.write(f"{iteration}\n")


def _write_rank_files(d: str | Path, fmt: str, wrapped, model, opt, fsdp: bool, rank: int,
                      loader_state: dict) -> str | None:
    """Collective: this rank's files of one checkpoint into `d`; its error in one line, None when all are written."""
    try:
        _write_model(d, fmt, wrapped, model, opt, fsdp, rank)
        _save(loader_state, _at(d, f"loader_rank{rank:03d}.pt"))
        _save(rng_state(), _at(d, f"rng_rank{rank:03d}.pt"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # OSError, torch's RuntimeError, WriteError, DCP's CheckpointException (a BaseException)
        return _reason(e)
    return None


def _write_state(d: str | Path, state: dict, fmt: str) -> None:
    with atomic_write(_at(d, "state.json")) as f:
        f.write(json.dumps({**state, "ckpt_format": fmt}, indent=1, sort_keys=True).encode("utf-8"))


def save(root: str | Path, iteration: int, wrapped: torch.nn.Module, model: torch.nn.Module,
         opt: torch.optim.Optimizer, *, fsdp: bool, fmt: str, rank: int, state: dict,
         loader_state: dict) -> Path | str:
    """Collective: every rank calls it. A write error on any rank (full disk, quota, a failed upload)
    removes what this save wrote and raises one InputError on every rank; the previous checkpoint stays
    the latest. Returns the iteration's folder (a url on object storage)."""
    if storage.is_remote(root):
        return _save_remote(str(root), iteration, wrapped, model, opt, fsdp=fsdp, fmt=fmt, rank=rank,
                            state=state, loader_state=loader_state)
    root = Path(root)
    final = iter_dir(root, iteration)
    tmp = root / f".{final.name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    err = _write_rank_files(tmp, fmt, wrapped, model, opt, fsdp, rank, loader_state)
    if rank == 0 and err is None:
        try:
            _write_state(tmp, state, fmt)
        except Exception as e:  # as before: every rank hears of it, none is left at a barrier
            err = _reason(e)
    errors = _gather_errors(err)
    if errors:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        _barrier()
        raise InputError(root, f"cannot write checkpoint iteration {iteration} ({errors[0]}); "
                               f"{human(free_bytes(root))} free there: make room or choose another --save "
                               "(the previous checkpoint is kept)")
    if rank == 0:
        _commit(root, tmp, final, iteration)
    _barrier()
    return final


def _save_remote(root: str, iteration: int, wrapped, model, opt, *, fsdp: bool, fmt: str, rank: int,
                 state: dict, loader_state: dict) -> str:
    """`save` onto object storage: files under their final names, then (rank 0, once every rank reported
    its files complete) `state.json` and the tracker; on any error, what this save wrote is removed."""
    final = _at(root, f"iter_{iteration:07d}")
    resave, prep_err = False, None
    if rank == 0:  # objects under an iteration no tracker names are a killed save's: start it clean
        try:
            resave = _tracker_value(root) == iteration
            if not resave:
                storage.remove_tree(final)
            _abort_uploads(final)
        except Exception as e:  # reported with the ranks' write errors: no rank is left at a barrier
            prep_err = _reason(e)
    _barrier()
    err = _write_rank_files(final, fmt, wrapped, model, opt, fsdp, rank, loader_state)
    errors = _gather_errors(prep_err or err)
    if not errors and rank == 0:
        try:
            _write_state(final, state, fmt)  # the iteration is complete: every rank's files are
            with atomic_write(_at(root, TRACKER)) as f:  # the commit
                f.write(f"{iteration}\n".encode())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            err = _reason(e)
        errors = _gather_errors(err)
    elif not errors:
        errors = _gather_errors(None)
    if errors:
        if rank == 0 and not resave:
            with contextlib.suppress(Exception):  # what stays is under an untracked iteration: never loaded
                storage.remove_tree(final)
        _barrier()
        raise InputError(root, f"cannot write checkpoint iteration {iteration} ({errors[0]}): fix what it names "
                               "or choose another --save (the previous checkpoint is kept)")
    _barrier()
    return final


def _abort_uploads(url: str) -> None:
    """Abort multipart uploads a killed save left under `url` (invisible, but they occupy storage)."""
    abort = getattr(storage.backend_for(url), "abort_incomplete_uploads", None)
    if abort is not None:
        abort(url)


# -------------------------------------------------------------------------------------------- load


def _is_file(p: str | Path) -> bool:
    return storage.exists(p) if storage.is_remote(p) else Path(p).is_file()


def _tracker_value(root: str | Path) -> int | None:
    """The tracker's text as an iteration (None when there is no tracker); InputError when it is no number."""
    tracker = _at(root, TRACKER)
    if not _is_file(tracker):
        return None
    text = storage.read_bytes(tracker).decode("utf-8", "replace").strip()
    try:
        return int(text)
    except ValueError:
        raise InputError(tracker, f"expected an iteration number, found {text[:40]!r}") from None


def latest_iteration(root: str | Path) -> int | None:
    """The iteration named by the tracker file, or None when the folder holds no checkpoint."""
    it = _tracker_value(root)
    if it is not None and not storage.isdir(_at(root, f"iter_{it:07d}")):
        raise InputError(_at(root, f"iter_{it:07d}"), "the latest checkpoint named by the tracker is missing")
    return it


def _complete_iterations(root: str | Path) -> list[str]:
    """The iter_* folders under `root`; on object storage only those with state.json (written once every
    rank's files were complete), since a killed save's objects look like a folder there."""
    if storage.is_remote(root):
        return [n for n in storage.listdir(root) if n.startswith("iter_") and _is_file(_at(root, n, "state.json"))]
    return sorted(p.name for p in Path(root).glob("iter_*") if p.is_dir())


def no_checkpoint_note(root: str | Path) -> str:
    """What --load found when there is nothing to resume from (Megatron then starts from scratch)."""
    remote = storage.is_remote(root)
    root = str(root) if remote else Path(root)
    if remote and not storage.isdir(root):
        return f"--load {root}: no object under this prefix, so there is no checkpoint: starting from scratch"
    if not remote and not root.exists():
        return f"--load {root}: the folder does not exist, so there is no checkpoint: starting from scratch"
    if not remote and not root.is_dir():
        raise InputError(root, "--load needs a checkpoint folder, this is a file")
    iters = _complete_iterations(root)
    if iters:
        raise InputError(_at(root, TRACKER), f"missing, but the folder holds {', '.join(iters[-3:])}: write the "
                                             "iteration to resume from into it (e.g. `echo N > "
                                             f"{_at(root, TRACKER)}`)")
    return (f"--load {root}: no checkpoint in this folder (no {TRACKER}, no iter_* folders): "
            "starting from scratch")


@dataclass
class Checkpoint:
    """One iteration's folder as this rank reads it: full states (format `torch`) or the `dcp/` path."""

    iteration: int
    path: Path | str  # a url on object storage
    state: dict
    model: dict | None
    optim: dict | None
    loader: dict
    rng: dict | None
    dcp: Path | str | None = None


def _load_file(p: str | Path, map_location: Any = "cpu") -> Any:
    try:
        src = io.BytesIO(storage.read_bytes(p)) if storage.is_remote(p) else p
        return torch.load(src, map_location=map_location, weights_only=False)  # our own files
    except FileNotFoundError:
        raise InputError(p, "checkpoint file is missing") from None
    except InputError:
        raise
    except Exception as e:
        raise InputError(p, f"cannot read checkpoint file: {e}") from None


def _read_state(d: str | Path) -> dict:
    try:
        return json.loads(storage.read_bytes(_at(d, "state.json")).decode("utf-8"))
    except (OSError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(_at(d, "state.json"), f"cannot read checkpoint state: {e}") from None


def load_checkpoint(root: str | Path, rank: int, map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """Read the latest checkpoint for this rank (None when there is none). A rank missing its own
    loader file (the run grew) takes rank 0's: the loader state is a global position."""
    it = latest_iteration(root)
    if it is None:
        return None
    d = _at(root, f"iter_{it:07d}")
    own = _at(d, f"loader_rank{rank:03d}.pt")
    loader = _load_file(own if _is_file(own) else _at(d, "loader_rank000.pt"))
    rng_name = _at(d, f"rng_rank{rank:03d}.pt")
    rng = _load_file(rng_name) if _is_file(rng_name) else None
    state = _read_state(d)
    if storage.isdir(_at(d, DCP_DIR)):
        return Checkpoint(iteration=it, path=d, state=state, model=None, optim=None, loader=loader, rng=rng,
                          dcp=_at(d, DCP_DIR))
    return Checkpoint(iteration=it, path=d, state=state, model=_load_file(_at(d, "model.pt"), map_location),
                      optim=_load_file(_at(d, "optim.pt"), map_location), loader=loader, rng=rng)


def restore_states(cp: Checkpoint, wrapped: torch.nn.Module, model: torch.nn.Module,
                   opt: torch.optim.Optimizer, fsdp: bool) -> None:
    """Collective: load either format into the model and optimizer, whatever the number of ranks now."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if cp.dcp is not None:
        import torch.distributed.checkpoint as dcp

        sd = _sharded_states(wrapped, opt)  # this layout's shards; DCP fills them from any saved layout
        try:
            with _quiet_dcp():
                dcp.load(sd, storage_reader=_dcp_reader(cp.dcp), **_dcp_kw())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # DCP's CheckpointException
            raise InputError(cp.dcp, f"cannot read sharded checkpoint: {str(e).splitlines()[0][:300]}") from None
        set_state_dict(wrapped, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        return
    if fsdp and _distributed():
        set_state_dict(wrapped, opt, model_state_dict=cp.model, optim_state_dict=cp.optim,
                       options=StateDictOptions(full_state_dict=True))
        return
    model.load_state_dict(cp.model)
    opt.load_state_dict(cp.optim)


def _config_diff(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a} vs {b}")
    return out


def check_model_matches(cp: Checkpoint, model_config: dict) -> None:
    """InputError naming the checkpoint and the model it was saved with when --model differs from it."""
    saved = cp.state.get("model_config")
    if not saved:
        return
    now = json.loads(json.dumps(model_config))  # tuples -> lists, as state.json holds them
    diff = _config_diff(saved, now)
    if diff:
        was = saved.get("name", "?")
        raise InputError(cp.path, f"was saved with --model {was}, this run builds --model {now.get('name', '?')} "
                                  f"({'; '.join(diff[:3])}): pass --model {was} or --load another folder")


def load_model_state_dict(ckpt_dir: str | Path, iteration: int | None = None) -> tuple[int, dict[str, torch.Tensor]]:
    """(iteration, full model state dict on the CPU) of a `run --save` folder (or url), either format, in
    one process with no process group; the latest iteration unless one is given. For export / generate."""
    root = str(ckpt_dir) if storage.is_remote(ckpt_dir) else Path(ckpt_dir)
    it = latest_iteration(root) if iteration is None else iteration
    if it is None:
        raise InputError(root, f"no checkpoint here (no {TRACKER}): pass the folder given to `mmtrain run --save`")
    d = _at(root, f"iter_{it:07d}")
    if not storage.isdir(d):
        raise InputError(d, "no such checkpoint iteration")
    if storage.isdir(_at(d, DCP_DIR)):
        return it, _dcp_model_tensors(_at(d, DCP_DIR))
    p = _at(d, "model.pt")
    if storage.is_remote(p):
        return it, _load_file(p)
    try:
        return it, torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise InputError(p, "checkpoint file is missing") from None
    except Exception as e:
        raise InputError(p, f"cannot read checkpoint file: {e}") from None


def _dcp_model_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The `model.*` tensors of a DCP checkpoint, assembled from every rank's shards (the optimizer
    state is not read)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        meta = _dcp_reader(path).read_metadata().state_dict_metadata
    except InputError:
        raise
    except Exception as e:
        raise InputError(path, f"cannot read sharded checkpoint metadata: {e}") from None
    sd = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
          if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    with _quiet_dcp():
        dcp.load(sd, storage_reader=_dcp_reader(path), no_dist=True)
    return {k[len("model."):]: v for k, v in sd.items()}
