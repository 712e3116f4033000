"""One writer per output folder: an exclusive ``flock`` on ``OUTDIR/.mmdata-shard.lock``, or on
object storage a lease on the object ``PREFIX/.mmdata-shard.lock`` (``mmdata.storage.s3lease``).

The kernel drops the lock when its holder exits, however it exits (SIGKILL included), so a stale
lock file never blocks a rerun. The file is removed on a clean exit; a waiter that opened it before
the removal sees a different inode after locking and tries again (the usual flock + unlink pattern).
A remote lease ends when its holder stops renewing it (60 s, ``$MMDATA_S3_LEASE_S``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Iterator

from mmdata import storage
from mmdata.errors import InputError
from mmdata.format.names import LOCK

__all__ = ["hold_lock", "hold_output_lock"]


def hold_output_lock(out: str | os.PathLike, what: str = "mmdata shard", name: str = LOCK,
                     lease_s: float | None = None) -> AbstractContextManager[None]:
    """One writer of the folder or prefix ``out`` for a with-block: ``hold_lock`` on a local folder,
    a lease on the object ``out/name`` on object storage. InputError (one line, exit 2) naming the
    holder if another run holds it. ``lease_s``: the remote lease (default 60 s or $MMDATA_S3_LEASE_S)."""
    local = storage.local_path(out)
    if local is not None:
        return hold_lock(local, what, name)
    return storage.hold_lease(storage.join(out, name), what, lease_s)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _not_a_lock(fd: int) -> bool:
    """The file holds something other than a pid (an input under the lock's name): never truncate it."""
    data = os.pread(fd, 64, 0).strip()
    return bool(data) and not data.isdigit()


@contextlib.contextmanager
def hold_lock(out_dir: Path, what: str = "mmdata shard", name: str = LOCK) -> Iterator[None]:
    """Hold the folder's lock for the block; InputError (exit 2, one line) if another run holds it."""
    path = Path(out_dir) / name
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(out_dir, f"--out: cannot write here: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(out_dir, f"another `{what}` is writing this folder{_holder(path)}; wait for it to "
                                      "finish or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file after we opened it: lock the new one
    if _not_a_lock(fd):
        os.close(fd)
        raise InputError(path, "exists and is not an mmdata lock file: move it out of --out")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
