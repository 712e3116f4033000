"""The ordered-map interface both engines give, the local process-pool one, and ``open_engine``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from mmdata.errors import InputError
from mmdata.procs import die_with_parent, resolve_workers

__all__ = ["Engine", "LocalEngine", "open_engine", "ENGINES"]

T = TypeVar("T")
R = TypeVar("R")
ENGINES = ("local", "ray")


class Engine(Protocol):
    """Runs ``fn`` over ``items``; yields the results in the items' order, keeping a bounded number in flight."""

    workers: int

    def map(self, fn: Callable[[T], R], items: Iterable[T], in_flight: int | None = None) -> Iterator[R]: ...

    def close(self) -> None: ...


def _init_local(parent: int) -> None:
    die_with_parent(parent)


class LocalEngine:
    """A process pool on this machine (fork where available); ``workers <= 1`` runs in this process."""

    def __init__(self, workers: int | None = None):
        self.workers = resolve_workers(workers)
        self._pool: Any = None

    def map(self, fn: Callable[[T], R], items: Iterable[T], in_flight: int | None = None) -> Iterator[R]:
        if self.workers <= 1:
            yield from map(fn, items)
            return
        if self._pool is None:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            self._pool = ctx.Pool(self.workers, initializer=_init_local, initargs=(os.getpid(),))
        yield from _bounded(lambda x: self._pool.apply_async(fn, (x,)), lambda h: h.get(), items,
                            in_flight or 4 * self.workers)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def _bounded(submit: Callable[[Any], Any], wait: Callable[[Any], R], items: Iterable[Any], limit: int) -> Iterator[R]:
    """Submit items keeping at most ``limit`` in flight; yield each result in submission order."""
    from collections import deque

    pending: deque = deque()
    for x in items:
        pending.append(submit(x))
        if len(pending) >= limit:
            yield wait(pending.popleft())
    while pending:
        yield wait(pending.popleft())


@contextlib.contextmanager
def open_engine(name: str, workers: int | None = None, ray_address: str | None = None) -> Iterator[Engine]:
    """The engine named by ``--engine``; closed (pool ended / Ray disconnected) on exit."""
    if name == "local":
        eng: Any = LocalEngine(workers)
    elif name == "ray":
        from mmdata.engine.ray_engine import RayEngine

        eng = RayEngine.connect(ray_address)
    else:
        raise InputError(None, f"--engine: unknown engine {name!r} (use one of: {', '.join(ENGINES)})")
    try:
        yield eng
    finally:
        eng.close()
