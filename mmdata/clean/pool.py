"""The worker pool of a clean run: forked workers that die with the main process (CONTRACT s.9:
a SIGKILLed `mmdata clean` leaves no live child), or, under ``clean_engine("ray", ...)``, Ray tasks on
a running cluster (CONTRACT s.7) behind the same ``concurrent.futures`` interface."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextvars import ContextVar
from typing import Any

from mmdata.errors import InputError
from mmdata.procs import die_with_parent, keep_freed_memory

__all__ = ["clean_engine", "ray_active", "worker_pool"]

ENGINES = ("local", "ray")
_RAY: ContextVar[Any] = ContextVar("mmdata_clean_ray", default=None)  # the connected RayEngine, if any


@contextlib.contextmanager
def clean_engine(name: str = "local", ray_address: str | None = None) -> Iterator[None]:
    """Run the clean calls inside on ``name``: ``local`` (a process pool) or ``ray`` (joined here, so a
    dead ``--ray-address`` fails in seconds before any work; disconnected on exit)."""
    if name == "local":
        yield
        return
    if name != "ray":
        raise InputError(None, f"--engine: unknown engine {name!r} (use one of: {', '.join(ENGINES)})")
    from mmdata.engine.ray_engine import RayEngine

    eng = RayEngine.connect(ray_address)
    token = _RAY.set(eng)
    try:
        yield
    finally:
        _RAY.reset(token)
        eng.close()


def ray_active() -> bool:
    """True inside ``clean_engine("ray")``: image checks go to the cluster, parsing stays here (the
    input file need not be on the workers' nodes)."""
    return _RAY.get() is not None


def worker_pool(workers: int) -> Executor:
    """The Ray cluster's executor under ``clean_engine("ray")``; else ``workers`` processes, each bound
    to this one with `die_with_parent` (forked where the platform can, so a worker's parent is this
    process and not a fork server)."""
    eng = _RAY.get()
    if eng is not None:
        return eng.executor()
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker, initargs=(os.getpid(),))


def _start_worker(parent: int) -> None:
    """`die_with_parent`, and keep the collector off the objects a forked worker inherited: walking
    them would copy every page they sit on (tens of thousands of page faults per worker)."""
    die_with_parent(parent)
    gc.freeze()
    keep_freed_memory()
