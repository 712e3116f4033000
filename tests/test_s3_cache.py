"""ShardCache: whole shards cached under a byte limit that counts every file, LRU eviction of
unpinned shards only, prefetch in plan order, crashed partials cleaned, and several processes
sharing one folder (each shard downloaded once)."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import pytest

from mmdata.errors import InputError
from mmdata.loader.cache import ShardCache


class LocalStore:
    """The two storage calls the cache uses, on local files; logs every download to ``log``."""

    def __init__(self, log: Path | None = None, delay: float = 0.0):
        self.log, self.delay = log, delay

    def size(self, url: str) -> int:
        return os.path.getsize(url)

    def open_input(self, url: str):
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {url}\n")
        time.sleep(self.delay)
        return open(url, "rb")


@pytest.fixture
def shards(tmp_path):
    src = tmp_path / "remote"
    src.mkdir()
    urls = []
    for i in range(4):
        p = src / f"shard-{i:06d}.tar"
        p.write_bytes(bytes([i]) * (1000 + i))
        urls.append(str(p))
    return urls


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name != ".lock")


def test_local_gives_the_bytes_and_stays_under_the_limit(tmp_path, shards):
    with ShardCache(tmp_path / "c", 2100, storage=LocalStore()) as c:
        for u in shards:
            p = c.local(u)
            assert p.read_bytes() == Path(u).read_bytes()
            assert c.usage() <= 2100
            c.release(u)
        # least recently used went first: the last two remain
        assert _files(tmp_path / "c") == sorted(c.name(u) for u in shards[2:])


def test_pinned_shards_are_never_evicted(tmp_path, shards):
    with ShardCache(tmp_path / "c", 2100, storage=LocalStore(), wait_s=0.3) as c:
        a, b = c.local(shards[0]), c.local(shards[1])
        with pytest.raises(InputError, match="cannot hold the shards in use at once"):
            c.local(shards[2])
        assert a.exists() and b.exists()
        assert not any(n.endswith(".part") for n in _files(tmp_path / "c"))  # the waiting fetch left nothing
        c.release(shards[0])
        assert c.local(shards[2]).read_bytes() == Path(shards[2]).read_bytes()
        assert not a.exists() and b.exists()


def test_shard_larger_than_the_limit(tmp_path, shards):
    with ShardCache(tmp_path / "c", 500, storage=LocalStore()) as c, \
            pytest.raises(InputError, match="--cache-limit 500 bytes is smaller than one shard"):
        c.local(shards[0])


def test_release_with_drop_deletes_now(tmp_path, shards):
    with ShardCache(tmp_path / "c", 10_000, storage=LocalStore()) as c:
        c.local(shards[0])
        c.local(shards[0])  # pinned twice
        c.release(shards[0], drop=True)
        assert c.path(shards[0]).exists()  # still pinned once
        c.release(shards[0], drop=True)
        assert not c.path(shards[0]).exists()


def test_prefetch_runs_ahead_in_order_and_downloads_once(tmp_path, shards):
    log = tmp_path / "log"
    with ShardCache(tmp_path / "c", 10_000, storage=LocalStore(log), ahead=2, threads=1) as c:
        c.prefetch(shards)
        deadline = time.monotonic() + 10
        while not c.path(shards[1]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        assert c.path(shards[0]).exists() and c.path(shards[1]).exists()
        assert not c.path(shards[2]).exists()  # no more than `ahead` unused shards
        for u in shards:
            assert c.local(u).read_bytes() == Path(u).read_bytes()
            c.release(u)
    assert [line.split()[1] for line in log.read_text().splitlines()] == shards


def test_stale_partial_of_a_crashed_download_is_counted_then_removed(tmp_path, shards):
    d = tmp_path / "c"
    d.mkdir()
    stale = d / ".deadbeef-shard.tar.999999.1.part"
    with open(stale, "wb") as f:
        f.truncate(1500)
    with ShardCache(d, 2100, storage=LocalStore()) as c:
        assert c.usage() == 1500
        c.local(shards[1])
        assert not stale.exists() and c.usage() == 1001


def _reader(cache_dir: str, urls: list[str], log: str, out: str) -> None:
    with ShardCache(cache_dir, 10_000, storage=LocalStore(Path(log), delay=0.2)) as c:
        got = []
        for u in urls:
            got.append(c.local(u).read_bytes() == Path(u).read_bytes())
            c.release(u)
    Path(out).write_text(str(all(got)))


def test_processes_share_the_folder_and_download_each_shard_once(tmp_path, shards):
    log = tmp_path / "log"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_reader, args=(str(tmp_path / "c"), shards, str(log), str(tmp_path / f"ok{i}")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert all((tmp_path / f"ok{i}").read_text() == "True" for i in range(3))
    assert sorted(line.split()[1] for line in log.read_text().splitlines()) == sorted(shards)


def test_cache_from_s3(tmp_path, monkeypatch):
    from s3_server import moto_s3

    from mmdata.storage.s3 import S3Backend

    with moto_s3() as server:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        be = S3Backend()
        data = os.urandom(20 << 20)  # several download chunks
        url = f"s3://{server.bucket}/set/shard-000000.tar"
        with be.atomic_output(url) as f:
            f.write(data)
        with ShardCache(tmp_path / "c", 64 << 20, storage=be) as c:
            assert c.local(url).read_bytes() == data
            assert c.downloaded_bytes == len(data)


def test_prefetch_further_than_the_limit_never_stalls_the_reader(tmp_path, shards):
    """Room for 2 shards, 8 prefetched ahead: the reader evicts prefetched-unused shards when it must
    and the prefetcher waits for released ones, so reading in plan order (twice) never waits out."""
    with ShardCache(tmp_path / "c", 2100, storage=LocalStore(), ahead=8, wait_s=5) as c:
        c.prefetch(shards + shards)
        for u in shards + shards:  # a stall would end in InputError after wait_s
            assert c.local(u).read_bytes() == Path(u).read_bytes()
            c.release(u)
            assert c.usage() <= 2100


class GatedStore(LocalStore):
    """Downloads of ``gated`` wait on ``go`` after starting (``started`` set): a download held open."""

    def __init__(self, gated: str):
        super().__init__()
        self.gated, self.started, self.go = gated, threading.Event(), threading.Event()

    def open_input(self, url: str):
        if url == self.gated:
            self.started.set()
            self.go.wait(10)
        return super().open_input(url)


def test_a_download_finishing_during_eviction_is_not_counted_as_freed(tmp_path, shards):
    """Thread A's download ends (partial renamed into place) while the reader's eviction has listed
    that partial: the shard is still there under its final name, so its bytes are not free."""
    store = GatedStore(shards[1])
    with ShardCache(tmp_path / "c", 2100, storage=store, wait_s=5) as c:
        c.local(shards[0])  # pinned: 1000 bytes
        a = threading.Thread(target=lambda: (c.local(shards[1]), c.release(shards[1])))
        a.start()  # reserves its 1001-byte partial, then waits on the gate
        assert store.started.wait(10)
        real, hooked = c._remove_if_free, []

        def remove_if_free(p: Path) -> bool:  # the reader's eviction, between listing and removing
            if p.name.endswith(".part") and not hooked:
                hooked.append(p)
                store.go.set()  # let A finish; before the fix it renames now, racing this eviction
                deadline = time.monotonic() + 1
                while not c.path(shards[1]).exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
            return real(p)

        c._remove_if_free = remove_if_free
        assert c.local(shards[2]).read_bytes() == Path(shards[2]).read_bytes()
        a.join(10)
        assert hooked and c.usage() <= 2100
