"""A bounded local cache of whole remote shards, shared by every loader process on a node.

Streaming shards from object storage one sample at a time pays a network round trip per sample;
like Mosaic Streaming and LitData, the loader instead downloads whole shards ahead of the plan into
``--cache-dir`` and reads them locally. The cache never holds more than ``--cache-limit`` bytes,
counting every file in the folder (a download reserves its full size up front: the partial file is
created at its final size), and evicts least-recently-used shards nobody is reading.

Processes share the folder safely: accounting runs under an exclusive ``flock`` on ``.lock``; a
shard in use is pinned by a shared ``flock`` on its file (eviction only takes files whose exclusive
lock it can get); a download writes ``.NAME.PID.part`` under an exclusive lock and renames it into
place, so a crashed download is recognised (its lock is gone) and removed. Every change to the
folder's names (reserve, rename, evict, unlink) happens under the dir lock and this process's
``_mu``, so an eviction never sees a download half-renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mmdata.errors import InputError

__all__ = ["ShardCache", "default_cache_dir", "DEFAULT_CACHE_LIMIT", "DERIVED"]

DEFAULT_CACHE_LIMIT = 10 * 10**9
DERIVED = "derived"  # the loader's length / plan caches, beside the shards: CACHE/derived/<manifest sha256>/
CHUNK = 8 << 20
_POLL_S = 0.05


def default_cache_dir() -> Path:
    """``$MMDATA_CACHE`` or ``~/.cache/mmdata`` (CONTRACT s.6)."""
    return Path(os.environ.get("MMDATA_CACHE") or Path.home() / ".cache" / "mmdata")


class _Cancelled(Exception):
    """A prefetch given up because the cache is closing."""


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class ShardCache:
    """Whole-shard prefetch into a bounded folder; ``local(url)`` gives a readable local path.

    ``storage`` is anything with ``size(url)`` and ``open_input(url)`` (default: ``mmdata.storage``).
    Pins are per process: ``local`` pins, ``release`` unpins; a pinned shard is never evicted.
    Create one per process (e.g. inside each DataLoader worker), never before a fork: a forked
    child would share the parent's lock descriptors, and with them its locks.
    """

    def __init__(self, cache_dir: str | os.PathLike, limit_bytes: int = DEFAULT_CACHE_LIMIT, *,
                 storage: Any = None, threads: int = 2, ahead: int = 8, wait_s: float = 600.0):
        self.dir = Path(cache_dir)
        self.limit = int(limit_bytes)
        self.ahead = max(1, ahead)
        self.wait_s = wait_s
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            raise InputError(self.dir, f"cannot use as --cache-dir: {e.strerror or e}") from None
        if storage is None:
            import mmdata.storage as storage  # type: ignore[no-redef]
        self.storage = storage
        self._mu = threading.Condition()
        self._pins: dict[str, list[int]] = {}  # name -> [fd, count]
        self._inflight: dict[str, Future] = {}  # name -> this process's download
        self._unused: set[str] = set()  # prefetched, not yet asked for by local()
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="shard-cache")
        self._feeder: threading.Thread | None = None
        self._stop = threading.Event()
        self._closing = False
        self.downloaded_bytes = 0

    # -- naming and accounting -----------------------------------------------------------------

    @staticmethod
    def name(url: str) -> str:
        """The cache file of ``url``: a digest of the full URL (two data sets may share shard names)."""
        return f"{hashlib.sha1(url.encode()).hexdigest()[:16]}-{url.rstrip('/').rsplit('/', 1)[-1]}"

    def path(self, url: str) -> Path:
        return self.dir / self.name(url)

    @contextlib.contextmanager
    def _dir_locked(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def usage(self) -> int:
        """Bytes of every file under the cache folder (partial downloads at their reserved size).
        Taken under the locks, so no rename or eviction of this cache is half-seen."""
        if self._lock_fd < 0:  # closed: nothing of this cache runs any more
            return self._usage()
        with self._mu, self._dir_locked():
            return self._usage()

    def _usage(self) -> int:
        """Its own files only (the top level): the loader's small derived caches live beside them,
        under ``DERIVED/``, and are not shards to count or evict."""
        total = 0
        for e in os.scandir(self.dir):
            if e.name != ".lock":
                with contextlib.suppress(FileNotFoundError):
                    if e.is_file():
                        total += e.stat().st_size
        return total

    def _remove_if_free(self, p: Path) -> bool:
        """Unlink ``p`` if no process holds a lock on it (a pin, or a live download)."""
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            if not _try_lock(fd, fcntl.LOCK_EX):
                return False
            p.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

    def _make_room(self, need: int, keep: set[str]) -> bool:
        """Under the dir lock: evict unpinned files, stale partials first, then least recently used,
        never those in ``keep``, until ``need`` more bytes fit. False if they cannot fit yet."""
        usage = self._usage()
        if usage + need <= self.limit:
            return True
        entries = []
        for e in os.scandir(self.dir):
            if e.is_file() and e.name != ".lock" and e.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    st = e.stat()
                    entries.append((not e.name.endswith(".part"), st.st_mtime, st.st_size, Path(e.path)))
        for _, _, size, p in sorted(entries):
            if self._remove_if_free(p):
                usage -= size
                if usage + need <= self.limit:
                    return True
        return False

    # -- fetching ------------------------------------------------------------------------------

    def _pin(self, name: str) -> bool:
        """Take (or count) this process's shared lock on a complete file; False if it is gone."""
        held = self._pins.get(name)
        if held is not None:
            held[1] += 1
            return True
        try:
            fd = os.open(self.dir / name, os.O_RDONLY)
        except FileNotFoundError:
            return False
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._pins[name] = [fd, 1]
        os.utime(fd)
        return True

    def _busy_elsewhere(self, name: str) -> bool:
        """Another process is downloading ``name`` right now (a locked partial)."""
        for e in os.scandir(self.dir):
            if e.name.startswith(f".{name}.") and e.name.endswith(".part"):
                try:
                    fd = os.open(e.path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    if not _try_lock(fd, fcntl.LOCK_SH):
                        return True
                finally:
                    os.close(fd)
        return False

    def _fetch(self, url: str, pin: bool) -> Path:
        """Make ``url`` present in the cache (downloading it if no one else is). ``pin`` (``local``):
        pin it, and evict anything unpinned, this process's prefetched shards included, waiting at
        most ``wait_s`` for room. Otherwise (a prefetch): never evict a shard this process pinned or
        prefetched, and wait for room as long as the cache is open."""
        name = self.name(url)
        final = self.dir / name
        size = None
        deadline = time.monotonic() + self.wait_s
        while True:
            if size is None and not final.exists():  # a network call: outside the locks
                size = int(self.storage.size(url))
                if size > self.limit:
                    raise InputError(self.dir, f"--cache-limit {self.limit:,} bytes is smaller than one shard "
                                               f"({url}: {size:,} bytes): raise --cache-limit")
            with self._mu, self._dir_locked():
                if final.exists():
                    if pin and not self._pin(name):
                        continue
                    if not pin:
                        with contextlib.suppress(FileNotFoundError):
                            os.utime(final)
                    return final
                if size is not None and not self._busy_elsewhere(name):
                    keep = set(self._pins) | ({name} if pin else self._unused | {name})
                    if self._make_room(size, keep):
                        part = self.dir / f".{name}.{os.getpid()}.{threading.get_ident()}.part"
                        fd = os.open(part, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
                        fcntl.flock(fd, fcntl.LOCK_EX)
                        os.ftruncate(fd, size)  # reserve: the partial counts at its full size
                        break
            if not pin and self._closing:
                raise _Cancelled(url)
            if pin and time.monotonic() > deadline:
                raise InputError(self.dir, f"--cache-limit {self.limit:,} bytes cannot hold the shards in use at "
                                           f"once (waited {self.wait_s:.0f} s for room for {url}): raise --cache-limit")
            time.sleep(_POLL_S)
        return self._download_into(url, part, fd, size, pin)

    def _download_into(self, url: str, part: Path, fd: int, size: int, pin: bool) -> Path:
        """Fill the reserved partial, then rename it into place (pinned if ``pin``) under the locks.

        Every change to the folder's names happens under ``_mu`` and the dir lock: a rename outside
        them let another thread's ``_make_room`` list the partial, find it gone (renamed, so its
        lock no longer guards that name), count its bytes as freed and overfill the cache."""
        name = self.name(url)
        final = self.dir / name
        try:
            self._download(url, fd, size)
        except BaseException:
            with self._mu, self._dir_locked():
                part.unlink(missing_ok=True)
                os.close(fd)
            raise
        with self._mu, self._dir_locked():
            try:
                os.rename(part, final)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)  # drop the exclusive lock before the shared one of the pin
            self.downloaded_bytes += size
            if pin:
                self._pin(name)  # still under the dir lock: nobody could evict it since the rename
        return final

    def _download(self, url: str, fd: int, size: int) -> None:
        with self.storage.open_input(url) as src:
            pos = 0
            while pos < size:
                buf = src.read(min(CHUNK, size - pos))
                if not buf:
                    raise InputError(url, f"ended after {pos:,} of {size:,} bytes while caching it")
                os.pwrite(fd, buf, pos)
                pos += len(buf)

    # -- the public face -----------------------------------------------------------------------

    def local(self, url: str) -> Path:
        """The local path of ``url``, pinned until ``release(url)``; blocks until it is downloaded."""
        name = self.name(url)
        with self._mu:
            self._unused.discard(name)
            self._mu.notify_all()
        # No waiting on a prefetch of it: one mid-download shows as a locked partial (waited for);
        # one still waiting for room is overtaken (this call may evict to make room).
        return self._fetch(url, pin=True)

    def release(self, url: str, drop: bool = False) -> None:
        """Unpin ``url``; with ``drop`` (the plan no longer needs it) delete it now unless another
        process reads it. Otherwise it stays, to be evicted least-recently-used."""
        name = self.name(url)
        with self._mu:
            held = self._pins.get(name)
            if held is None:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del self._pins[name]
            os.close(held[0])
            if drop:
                with self._dir_locked():
                    self._remove_if_free(self.dir / name)

    def prefetch(self, urls_in_plan_order: Iterable[str]) -> None:
        """Download these shards in the background, in order, at most ``ahead`` of what ``local``
        has asked for; replaces any earlier prefetch list."""
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join()
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, args=(iter(urls_in_plan_order), self._stop),
                                        name="shard-cache-feed", daemon=True)
        self._feeder.start()

    def _feed(self, urls: Iterator[str], stop: threading.Event) -> None:
        for url in urls:
            name = self.name(url)
            with self._mu:
                while len(self._unused) >= self.ahead and not stop.is_set():
                    self._mu.wait(0.5)
                if stop.is_set():
                    return
                if name in self._inflight or name in self._pins:
                    continue
                self._unused.add(name)
                fut = self._pool.submit(self._fetch, url, False)
                self._inflight[name] = fut
            fut.add_done_callback(lambda f, n=name: self._done(n, f))

    def _done(self, name: str, fut: Future) -> None:
        with self._mu:
            self._inflight.pop(name, None)
            if fut.cancelled() or fut.exception() is not None:
                self._unused.discard(name)  # local() will fetch it (and report a real error)
            self._mu.notify_all()

    def close(self) -> None:
        """Stop prefetching, unpin everything (files stay for the next run, within the limit)."""
        self._closing = True
        self._stop.set()
        with self._mu:
            self._mu.notify_all()
        if self._feeder is not None:
            self._feeder.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._mu:
            for fd, _ in self._pins.values():
                os.close(fd)
            self._pins.clear()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
        self._lock_fd = -1

    def __enter__(self) -> ShardCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
