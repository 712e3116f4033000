"""The worker pool of a clean run: forked workers that die with the main process (CONTRACT s.9:
a SIGKILLed `mmdata clean` leaves no live child)."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor

from mmdata.procs import die_with_parent

__all__ = ["worker_pool"]


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` processes, each bound to this one with `die_with_parent` (forked where the platform
    can, so a worker's parent is this process and not a fork server)."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),))
