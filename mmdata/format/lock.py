"""One writer per output folder: an exclusive ``flock`` on ``OUTDIR/.mmdata-shard.lock``.

The kernel drops the lock when its holder exits, however it exits (SIGKILL included), so a stale
lock file never blocks a rerun. The file is removed on a clean exit; a waiter that opened it before
the removal sees a different inode after locking and tries again (the usual flock + unlink pattern).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from mmdata.errors import InputError
from mmdata.format.names import LOCK

__all__ = ["hold_lock"]


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


@contextlib.contextmanager
def hold_lock(out_dir: Path, what: str = "mmdata shard") -> Iterator[None]:
    """Hold the folder's lock for the block; InputError (exit 2, one line) if another run holds it."""
    path = Path(out_dir) / LOCK
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
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
