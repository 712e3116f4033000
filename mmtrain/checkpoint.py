"""Atomic checkpoints in Megatron's layout.

`DIR/iter_0000010/{model.pt, optim.pt, state.json, loader_rank000.pt, rng_rank000.pt, ...}` and
`DIR/latest_checkpointed_iteration.txt`. Every rank writes into `DIR/.iter_0000010.tmp/`; rank 0
renames the folder into place and then updates the tracker, so a crash leaves the previous checkpoint
as the latest one and never a half-written folder under a final name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmdata.errors import InputError
from mmdata.io import atomic_write

TRACKER = "latest_checkpointed_iteration.txt"


def iter_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def _save(obj: Any, path: Path) -> None:
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


def save_checkpoint(root: str | Path, iteration: int, *, rank: int, barrier: Callable[[], None],
                    model_state: dict | None, optim_state: dict | None, state: dict | None,
                    loader_state: dict, rng: dict) -> Path:
    """Collective: every rank calls it. Rank 0 passes model/optimizer/state, every rank its loader and RNG."""
    root = Path(root)
    final = iter_dir(root, iteration)
    tmp = root / f".{final.name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    _save(loader_state, tmp / f"loader_rank{rank:03d}.pt")
    _save(rng, tmp / f"rng_rank{rank:03d}.pt")
    if rank == 0:
        _save(model_state, tmp / "model.pt")
        _save(optim_state, tmp / "optim.pt")
        with atomic_write(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
    barrier()
    if rank == 0:
        if final.exists():  # the same iteration saved again: replace it
            old = root / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
        with atomic_write(root / TRACKER, "w", encoding="utf-8") as f:
            f.write(f"{iteration}\n")
    barrier()
    return final


def latest_iteration(root: str | Path) -> int | None:
    """The iteration named by the tracker file, or None when the folder holds no checkpoint."""
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text(encoding="utf-8").strip()
    try:
        it = int(text)
    except ValueError:
        raise InputError(tracker, f"expected an iteration number, found {text[:40]!r}") from None
    if not iter_dir(root, it).is_dir():
        raise InputError(iter_dir(root, it), "the latest checkpoint named by the tracker is missing")
    return it


def no_checkpoint_note(root: str | Path) -> str:
    """What --load found when there is nothing to resume from (Megatron then starts from scratch)."""
    root = Path(root)
    if not root.exists():
        return f"--load {root}: the folder does not exist, so there is no checkpoint: starting from scratch"
    if not root.is_dir():
        raise InputError(root, "--load needs a checkpoint folder, this is a file")
    iters = sorted(p.name for p in root.glob("iter_*") if p.is_dir())
    if iters:
        raise InputError(root / TRACKER, f"missing, but the folder holds {', '.join(iters[-3:])}: write the "
                                         "iteration to resume from into it (e.g. `echo N > "
                                         f"{root / TRACKER}`)")
    return (f"--load {root}: no checkpoint in this folder (no {TRACKER}, no iter_* folders): "
            "starting from scratch")


@dataclass
class Checkpoint:
    iteration: int
    path: Path
    state: dict
    model: dict
    optim: dict
    loader: dict
    rng: dict | None


def load_checkpoint(root: str | Path, rank: int, map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """Read the latest checkpoint for this rank (None when there is none). A rank missing its own
    loader file (the run grew) takes rank 0's: the loader state is a global position."""
    it = latest_iteration(root)
    if it is None:
        return None
    d = iter_dir(root, it)

    def load(name: str):
        p = d / name
        try:
            return torch.load(p, map_location=map_location, weights_only=False)  # our own files
        except FileNotFoundError:
            raise InputError(p, "checkpoint file is missing") from None
        except Exception as e:
            raise InputError(p, f"cannot read checkpoint file: {e}") from None

    own = f"loader_rank{rank:03d}.pt"
    loader = load(own if (d / own).is_file() else "loader_rank000.pt")
    rng_name = f"rng_rank{rank:03d}.pt"
    rng = load(rng_name) if (d / rng_name).is_file() else None
    try:
        state = json.loads((d / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(d / "state.json", f"cannot read checkpoint state: {e}") from None
    return Checkpoint(iteration=it, path=d, state=state, model=load("model.pt"), optim=load("optim.pt"),
                      loader=loader, rng=rng)


def load_model_state_dict(ckpt_dir: str | Path, iteration: int | None = None) -> tuple[int, dict[str, torch.Tensor]]:
    """(iteration, the full model state dict on CPU) of a `run --save` folder: the latest, or `iteration`."""
    it = latest_iteration(ckpt_dir) if iteration is None else int(iteration)
    if it is None:
        raise InputError(ckpt_dir, f"no checkpoint here (no {TRACKER}): give a folder written by `mmtrain run --save`")
    d = iter_dir(ckpt_dir, it)
    if not d.is_dir():
        have = ", ".join(sorted(p.name for p in Path(ckpt_dir).glob("iter_*") if p.is_dir())[-3:]) or "none"
        raise InputError(d, f"no such checkpoint iteration (saved: {have})")
    try:
        sd = torch.load(d / "model.pt", map_location="cpu", weights_only=False)  # our own files
    except FileNotFoundError:
        raise InputError(d / "model.pt", "checkpoint file is missing") from None
    except Exception as e:
        raise InputError(d / "model.pt", f"cannot read checkpoint file: {e}") from None
    return it, sd
