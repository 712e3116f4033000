"""The storage seam's contract: the ``Backend`` protocol every scheme implements, and its errors."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol, runtime_checkable

from mmdata.errors import InputError

__all__ = ["Backend", "StorageError", "WriteError"]


class StorageError(InputError):
    """Bytes that cannot be read or written: one line naming the url and the fix (exit 2)."""


class WriteError(StorageError, OSError):
    """A file that cannot be written: one line and exit 2 like any InputError, and still an OSError
    for callers that treat an unwritable cache as a miss."""


@runtime_checkable
class Backend(Protocol):
    """What ``mmdata.storage`` needs from one scheme (local files, s3, ...); urls are passed as given."""

    def open_input(self, url: str) -> BinaryIO: ...

    def read_range(self, url: str, offset: int, length: int) -> bytes: ...

    def size(self, url: str) -> int: ...

    def exists(self, url: str) -> bool: ...

    def isdir(self, url: str) -> bool: ...

    def listdir(self, url: str) -> list[str]: ...

    def makedirs(self, url: str) -> None: ...

    def remove(self, url: str) -> None: ...

    def atomic_output(self, url: str) -> AbstractContextManager[BinaryIO]: ...

    def move(self, src: str, dst: str) -> None: ...
