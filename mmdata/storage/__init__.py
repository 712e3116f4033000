"""The storage seam: every file of the shard format is opened through these functions.

They take a local path (str or os.PathLike) or a url (``s3://bucket/key``, ``file:///...``) and
dispatch to the scheme's backend, so remote storage changes one module (see docs/DESIGN.md).
Backends are cached per process (S3 clients are not fork-safe: a forked worker builds its own).
"""

from __future__ import annotations

import importlib
import os
import posixpath
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from mmdata.storage.base import Backend, StorageError, WriteError
from mmdata.storage.local import to_path
from mmdata.storage.staging import local_copies
from mmdata.storage.urlpath import UrlPath, as_path

__all__ = ["Backend", "StorageError", "WriteError", "is_remote", "join", "open_input", "read_range", "read_bytes",
           "size", "exists", "isdir", "listdir", "makedirs", "remove", "remove_tree", "move", "atomic_output", "local_path",
           "backend_for", "REGISTRY", "UrlPath", "as_path", "arrow_source", "hold_lease", "local_copies"]

# scheme -> "module:Class", imported on first use (s3.py may not exist on every branch)
REGISTRY: dict[str, str] = {
    "": "mmdata.storage.local:LocalBackend",
    "file": "mmdata.storage.local:LocalBackend",
    "s3": "mmdata.storage.s3:S3Backend",
}
_CACHE: dict[tuple[int, str], Backend] = {}


def _scheme(url: str | os.PathLike) -> str:
    s = os.fspath(url)
    head, sep, _ = s.partition("://")
    return head.lower() if sep and head.isidentifier() else ""


def is_remote(url: str | os.PathLike) -> bool:
    return _scheme(url) not in ("", "file")


def backend_for(url: str | os.PathLike) -> Backend:
    """The (per-process cached) backend for ``url``'s scheme; StorageError for an unknown scheme."""
    scheme = _scheme(url)
    key = (os.getpid(), scheme)
    b = _CACHE.get(key)
    if b is None:
        where = REGISTRY.get(scheme)
        if where is None:
            raise StorageError(os.fspath(url), f"unknown storage scheme {scheme!r} (use a local path or "
                                               f"{', '.join(s + '://' for s in REGISTRY if s)})")
        mod, _, cls = where.partition(":")
        try:
            b = getattr(importlib.import_module(mod), cls)()
        except ImportError as e:
            raise StorageError(os.fspath(url), f"no backend for {scheme}:// ({e})") from None
        _CACHE[key] = b
    return b


def join(url: str | os.PathLike, *parts: str) -> str:
    """'/'-join for urls, os.path.join for local paths."""
    s = os.fspath(url)
    return posixpath.join(s, *parts) if is_remote(s) else os.path.join(s, *parts)


def local_path(url: str | os.PathLike) -> Path | None:
    """A real local path for code that needs one; None when ``url`` is remote."""
    return None if is_remote(url) else to_path(url)


def open_input(url: str | os.PathLike) -> BinaryIO:
    """A seekable random-access reader; the caller closes it."""
    return backend_for(url).open_input(os.fspath(url))


def read_range(url: str | os.PathLike, offset: int, length: int) -> bytes:
    return backend_for(url).read_range(os.fspath(url), offset, length)


def read_bytes(url: str | os.PathLike) -> bytes:
    with open_input(url) as f:
        return f.read()


def size(url: str | os.PathLike) -> int:
    return backend_for(url).size(os.fspath(url))


def exists(url: str | os.PathLike) -> bool:
    return backend_for(url).exists(os.fspath(url))


def isdir(url: str | os.PathLike) -> bool:
    return backend_for(url).isdir(os.fspath(url))


def listdir(url: str | os.PathLike) -> list[str]:
    return backend_for(url).listdir(os.fspath(url))


def makedirs(url: str | os.PathLike) -> None:
    backend_for(url).makedirs(os.fspath(url))


def remove(url: str | os.PathLike) -> None:
    backend_for(url).remove(os.fspath(url))


def remove_tree(url: str | os.PathLike) -> None:
    """Remove a folder or prefix and everything under it; a missing one is not an error (local:
    ``shutil.rmtree``; S3: one recursive listing, then a delete per object)."""
    local = local_path(url)
    if local is not None:
        import shutil

        shutil.rmtree(local, ignore_errors=True)
        return
    backend_for(url).remove_tree(os.fspath(url))  # type: ignore[attr-defined]


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Give the complete file ``src`` the name ``dst`` (replacing it), on the same storage: a rename
    locally, a server-side copy then delete on S3; ``dst`` is never seen incomplete."""
    if _scheme(src) != _scheme(dst):
        raise StorageError(os.fspath(dst), f"cannot move across storages (from {os.fspath(src)})")
    backend_for(dst).move(os.fspath(src), os.fspath(dst))  # type: ignore[attr-defined]


def atomic_output(url: str | os.PathLike) -> AbstractContextManager[BinaryIO]:
    """A binary writer visible under ``url`` only when the with-block exits cleanly."""
    return backend_for(url).atomic_output(os.fspath(url))


def arrow_source(url: str | os.PathLike) -> tuple[str, object | None]:
    """``(path, filesystem)`` for pyarrow readers (``pyarrow.dataset.dataset(path, filesystem=fs)``):
    a local path and None, or the remote backend's own pyarrow filesystem (same endpoint and keys)."""
    if not is_remote(url):
        return str(to_path(url)), None
    return backend_for(url).arrow_source(os.fspath(url))  # type: ignore[attr-defined]


def hold_lease(url: str | os.PathLike, what: str, lease_s: float | None = None) -> AbstractContextManager[None]:
    """Hold the remote lock object ``url`` for a with-block (one writer per prefix; ``s3lease`` says
    how); StorageError (one line) if another run holds it or the scheme has no lock."""
    lease = getattr(backend_for(url), "lease", None)
    if lease is None:
        raise StorageError(os.fspath(url), "this storage has no lock for one writer per output")
    return lease(os.fspath(url), what, lease_s)
