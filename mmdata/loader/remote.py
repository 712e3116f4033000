"""Reading the samples of shard sets on object storage, ahead of the plan, in a loader worker.

One blocking ranged GET per sample costs a network round trip each (~48 samples/s at 20 ms), so a
worker never reads remote samples one at a time. Two ways, chosen by ``LoaderConfig.remote_read``:

- ``cache`` (default; Mosaic Streaming / LitData): whole shards are downloaded in plan order into the
  bounded ``ShardCache`` (``--cache-dir``, ``--cache-limit``) and read from local disk; each shard is
  pinned only while a row reads it.
- ``ranges``: the byte ranges of the next rows' samples are fetched concurrently (``RANGE_THREADS``
  GETs in flight) straight into memory; no disk, but every epoch reads over the network again.

Both give the bytes the index points at, so batches and resume are those of a local folder.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from mmdata import storage

__all__ = ["RemoteReads", "remote_rows", "REMOTE_READS", "RANGE_THREADS", "ROWS_AHEAD"]

REMOTE_READS = ("cache", "ranges")
RANGE_THREADS = 32
ROWS_AHEAD = 8  # rows whose samples are fetched ahead in ``ranges`` mode


class RemoteReads:
    """Per worker process: where the samples of remote sets come from (see the module docstring)."""

    def __init__(self, sets: list[Any], mode: str, cache_dir: str | None, cache_limit: int):
        from mmdata.loader.cache import ShardCache, default_cache_dir

        self.sets = sets
        self.mode = mode
        self.remote = [storage.is_remote(s.index.root) for s in sets]
        self.cache = ShardCache(cache_dir or default_cache_dir(), cache_limit) if mode == "cache" else None
        self.pool = ThreadPoolExecutor(RANGE_THREADS, thread_name_prefix="range-read") if mode == "ranges" else None
        self._ranges: dict[tuple[int, int], Future] = {}
        self._pinned: list[str] = []

    def url(self, set_id: int, shard: int) -> str:
        ix = self.sets[set_id].index
        return storage.join(ix.root, ix.shards[shard])

    # -- cache mode -------------------------------------------------------------------------------

    def shard_urls(self, rows: Iterable[tuple[int, int, np.ndarray]]) -> Iterator[str]:
        """The remote shards ``rows`` (epoch, set, samples) touch, in first-use order, once per epoch."""
        seen: set[tuple[int, int, int]] = set()
        for e, set_id, samples in rows:
            if not self.remote[set_id]:
                continue
            shard_idx = self.sets[set_id].index.shard_idx[samples]
            for sh in dict.fromkeys(shard_idx.tolist()):
                if (e, set_id, sh) not in seen:
                    seen.add((e, set_id, sh))
                    yield self.url(set_id, sh)

    def start(self, rows: Iterable[tuple[int, int, np.ndarray]]) -> None:
        """Begin downloading the shards of these upcoming rows (cache mode)."""
        if self.cache is not None:
            self.cache.prefetch(self.shard_urls(rows))

    def open(self, set_id: int, shard: int) -> Any:
        """A local file of a remote shard, pinned in the cache until ``row_done``."""
        assert self.cache is not None
        url = self.url(set_id, shard)
        path = self.cache.local(url)
        self._pinned.append(url)
        return open(path, "rb")

    # -- ranges mode ------------------------------------------------------------------------------

    def ahead(self, set_id: int, samples: np.ndarray) -> None:
        """Start fetching the bytes of one upcoming row's remote samples (ranges mode)."""
        if self.pool is None or not self.remote[set_id]:
            return
        ix = self.sets[set_id].index
        for i in samples.tolist():
            if (set_id, i) not in self._ranges:
                url = storage.join(ix.root, ix.shards[int(ix.shard_idx[i])])
                self._ranges[(set_id, i)] = self.pool.submit(storage.read_range, url, int(ix.offset[i]),
                                                             int(ix.nbytes[i]))

    def take(self, set_id: int, i: int) -> bytes | None:
        """The prefetched bytes of sample ``i`` (None if it was not prefetched)."""
        fut = self._ranges.pop((set_id, i), None)
        return None if fut is None else fut.result()

    # -- both -------------------------------------------------------------------------------------

    def row_done(self, files: dict) -> None:
        """Close and unpin the cached shards the row used (they stay cached, evicted LRU)."""
        if self.cache is None:
            return
        for key in [k for k in files if self.remote[k[0]]]:
            files.pop(key).close()
        for url in self._pinned:
            self.cache.release(url)
        self._pinned.clear()

    def close(self) -> None:
        if self.cache is not None:
            for url in self._pinned:
                self.cache.release(url)
            self._pinned.clear()
            self.cache.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def lookahead(positions: Iterator[tuple[int, int]], planner: Any, n: int) -> Iterator[tuple[tuple[int, int], deque]]:
    """``((epoch, row), upcoming)`` for each position, ``upcoming`` holding up to ``n`` later positions."""
    buf: deque = deque()
    for p in positions:
        buf.append(p)
        if len(buf) > n:
            yield buf.popleft(), buf
    while buf:
        yield buf.popleft(), buf


def remote_rows(builder: Any, sets: list[Any], config: Any, planner: Any, positions: Iterator[tuple[int, int]],
                epoch: int, start: int, stride: int) -> Iterator[tuple[int, int]]:
    """The worker's positions, unchanged, with the remote reads started ahead of them: the shard
    cache is fed the shards of the whole upcoming stream (its own planner copy, so the feeder thread
    never shares the plan cache), or the next ``ROWS_AHEAD`` rows' ranges are requested."""
    import copy

    from mmdata.loader.plan import iter_positions

    builder.remote = remote = RemoteReads(sets, config.remote_read, config.shard_cache_dir, config.cache_limit)
    if remote.cache is not None:
        feeder_plan = copy.copy(planner)
        feeder_plan._cache = {}
        rows = ((e, *feeder_plan.epoch(e).row(r))
                for e, r in iter_positions(feeder_plan, epoch, start, stride, config.epochs))
        remote.start(rows)
        yield from positions
        return
    for (e, r), upcoming in lookahead(positions, planner, ROWS_AHEAD):
        for e2, r2 in [(e, r), *upcoming]:
            remote.ahead(*planner.epoch(e2).row(r2))
        yield e, r
