"""Local files behind the storage seam; also the one atomic-write implementation (temp + fsync + rename)."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterator

from mmdata.storage.base import WriteError

__all__ = ["LocalBackend", "atomic_file", "fsync_dir", "to_path"]


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a write error, whoever made the write call


def to_path(url: str | os.PathLike) -> Path:
    """A local path from a plain path or a ``file://`` url."""
    s = os.fspath(url)
    return Path(s[len("file://"):]) if s.startswith("file://") else Path(s)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so a rename inside it survives a crash (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Write to a temp file beside ``path``; rename it into place only when the block succeeds.

    A crash leaves the old file or none, never a half-written one; on any error the temp file is
    removed. A file-system error of the write itself (no such folder, permission, disk full) is a
    ``WriteError`` naming ``path``; errors raised by the block pass through unchanged.
    """
    path = to_path(path)
    if _is_special(path):  # /dev/null, a FIFO: write into it; renaming over it would replace the node
        yield from _write_special(path, mode, encoding)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(path, f"cannot write: {e.strerror or e}") from None
    try:
        f = os.fdopen(fd, mode, encoding=encoding)
        try:
            try:
                yield f
            except OSError as e:  # the disk filled while the block wrote: name the file, no traceback
                if isinstance(e, WriteError) or e.errno not in _FULL:
                    raise
                raise WriteError(path, f"cannot write: {e.strerror or e}") from None
            try:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            except OSError as e:
                raise WriteError(path, f"cannot write: {e.strerror or e}") from None
        except BaseException:
            with contextlib.suppress(OSError):  # closing flushes what is buffered: on a full disk that
                f.close()  # fails again, and must not replace the error that names this file
            raise
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
            os.replace(tmp, path)
        except OSError as e:
            raise WriteError(path, f"cannot write: {e.strerror or e}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _is_special(path: Path) -> bool:
    """An existing output that is not a regular file or a folder (a device node, a FIFO, a socket)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))


def _write_special(path: Path, mode: str, encoding: str | None) -> Iterator[IO[Any]]:
    try:
        f = open(path, mode, encoding=encoding)
    except OSError as e:
        raise WriteError(path, f"cannot write: {e.strerror or e}") from None
    with f:
        yield f


def _remove_stale_temps(path: Path) -> None:
    """Remove ``.NAME.PID.*.tmp`` left beside ``path`` by a killed writer (its PID is gone); a live
    writer's temp file is left alone."""
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = p.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalBackend:
    """Plain files: ``open`` / ``os`` calls on the path (a ``file://`` prefix is stripped)."""

    def open_input(self, url: str) -> BinaryIO:
        return open(to_path(url), "rb")

    def read_range(self, url: str, offset: int, length: int) -> bytes:
        with open(to_path(url), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def size(self, url: str) -> int:
        return to_path(url).stat().st_size

    def exists(self, url: str) -> bool:
        return to_path(url).exists()

    def isdir(self, url: str) -> bool:
        return to_path(url).is_dir()

    def listdir(self, url: str) -> list[str]:
        return sorted(os.listdir(to_path(url)))

    def makedirs(self, url: str) -> None:
        to_path(url).mkdir(parents=True, exist_ok=True)

    def remove(self, url: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(to_path(url))

    def move(self, src: str, dst: str) -> None:
        """``os.replace`` (atomic on one file system), then fsync the folder so it survives a crash."""
        os.replace(to_path(src), to_path(dst))
        fsync_dir(to_path(dst).parent)

    def atomic_output(self, url: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return atomic_file(url, "wb")  # type: ignore[return-value]
