"""Worker processes: how many to start, and making each one die with its parent.

One place for both, so every pool (clean's image checks, shard's encoders, the loader's workers,
Ray's local fallback) behaves the same when the main process is SIGKILLed: no orphan is left alive.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from mmdata.errors import InputError

__all__ = ["die_with_parent", "keep_freed_memory", "resolve_workers"]


def resolve_workers(workers: int | None) -> int:
    """``None`` / 0 -> all cores."""
    if not workers:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers < 0:
        raise InputError(None, f"--workers must be >= 1 (got {workers})")
    return workers


def die_with_parent(parent: int) -> None:
    """End this worker quietly as soon as the parent process is gone (e.g. SIGKILLed): otherwise it
    finishes its chunk and prints a BrokenPipeError traceback sending the result to nobody."""
    if os.getppid() != parent:
        os._exit(0)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # PR_SET_PDEATHSIG: the kernel kills us
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(0)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:  # elsewhere: poll
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, name="mmdata-parent-watch", daemon=True).start()


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(trim: int = 64 << 20, mmap_above: int = 32 << 20) -> None:
    """Have glibc's malloc keep up to ``trim`` freed bytes for reuse and serve blocks under
    ``mmap_above`` from its heap: a worker that allocates and frees a few MB per task otherwise gives the
    pages back and faults them in again each time (a fifth of a clean worker's CPU time). For worker
    processes we own only; elsewhere (another libc) nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_above)
        libc.mallopt(_M_TRIM_THRESHOLD, trim)
    except (OSError, AttributeError):  # musl and others have no mallopt
        pass
