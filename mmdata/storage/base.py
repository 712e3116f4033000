"""The storage seam's shared parts: the Backend protocol every scheme implements, and StorageError."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol, runtime_checkable

from mmdata.errors import InputError

__all__ = ["Backend", "StorageError"]


class StorageError(InputError):
    """A storage problem the user fixes (unreachable endpoint, credentials, missing bucket): one line
    naming the url and the fix, exit 2."""


@runtime_checkable
class Backend(Protocol):
    """What a storage scheme provides; every method takes the url (or local path) string as given."""

    def open_input(self, url: str) -> BinaryIO: ...

    def read_range(self, url: str, offset: int, length: int) -> bytes: ...

    def size(self, url: str) -> int: ...

    def exists(self, url: str) -> bool: ...

    def isdir(self, url: str) -> bool: ...

    def listdir(self, url: str) -> list[str]: ...

    def makedirs(self, url: str) -> None: ...

    def remove(self, url: str) -> None: ...

    def atomic_output(self, url: str) -> AbstractContextManager[BinaryIO]: ...
