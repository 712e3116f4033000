"""Worker output through shared memory: a forked worker writes a batch's serialised output records into
a slot of one anonymous shared mapping, and the main process writes them to OUT straight from there.

Without it each batch's ~1 MB of output was pickled, pushed through the pool's pipe in 64 KB pieces,
read back into fresh buffers and unpickled: a quarter of a 2-worker text-only run's CPU time (page
faults, pipe copies, wake-ups). A worker that did not inherit the mapping (a spawned one, a pool made
before it) or a batch larger than a slot falls back to returning the bytes, with the same output.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
from collections.abc import Sequence
from itertools import count
from typing import NamedTuple

__all__ = ["Held", "Slots", "put"]

_SLOT_BYTES = 4 << 20  # output bytes of one batch held in shared memory (larger batches are pickled)
_tokens = count(1)
_AREA: Slots | None = None  # the mapping a forked worker inherited (the newest one made in this process)


class Held(NamedTuple):
    """``length`` output bytes of a batch, in slot ``index`` of the area ``token``."""

    token: int
    index: int
    length: int


class Slots:
    """``count`` slots of shared memory for batch outputs, lent to one task at a time (make it before
    the pool forks its workers; the workers find it in `_AREA`)."""

    def __init__(self, count: int, size: int | None = None):
        global _AREA
        self.size = size = size or _SLOT_BYTES
        self.token = next(_tokens) + (os.getpid() << 20)  # never equal to an area of another run
        self.mem = mmap.mmap(-1, count * size)  # MAP_SHARED: the workers' writes are seen here
        self._free = list(range(count - 1, -1, -1))
        _AREA = self

    @staticmethod
    def usable() -> bool:
        """Only forked workers share the mapping (`mmdata.clean.pool.worker_pool` forks where it can)."""
        return "fork" in mp.get_all_start_methods()

    def acquire(self) -> int | None:
        """A free slot, or None when all are lent (the task then returns its bytes)."""
        return self._free.pop() if self._free else None

    def release(self, index: int) -> None:
        """The slot's bytes were written out (nothing refers to them any more)."""
        self._free.append(index)

    def view(self, held: Held) -> memoryview:
        """The bytes a worker left in a slot."""
        start = held.index * self.size
        return memoryview(self.mem)[start:start + held.length]

    def close(self) -> None:
        global _AREA
        if _AREA is self:
            _AREA = None
        try:
            self.mem.close()
        except BufferError:  # a view still referenced somewhere: the mapping goes with it
            pass


def put(token: int, index: int, parts: Sequence[bytes], length: int) -> Held | None:
    """In a worker: copy ``parts`` (``length`` bytes in all) into slot ``index`` of the inherited area
    ``token``; None when this worker has no such area or the bytes do not fit."""
    area = _AREA
    if area is None or area.token != token or length > area.size:
        return None
    mem = area.mem
    mem.seek(index * area.size)
    write = mem.write
    for p in parts:
        write(p)
    return Held(token, index, length)
