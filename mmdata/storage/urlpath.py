"""``as_path``: a local ``Path``, or for a URL a ``UrlPath`` with the few path operations code that
walks a shard folder uses (``/``, ``name``, ``parent``, ``suffix``, ``str``/``fspath``), so such code
passes one object to ``mmdata.storage`` whichever storage holds the folder.

``Path("s3://b/k")`` silently becomes ``s3:/b/k``; ``as_path`` keeps the URL intact.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

__all__ = ["UrlPath", "as_path"]


class UrlPath(os.PathLike):
    """An immutable ``scheme://bucket/key`` path; ``/`` joins with '/'."""

    __slots__ = ("_url",)

    def __init__(self, url: str):
        scheme, sep, rest = url.partition("://")
        self._url = f"{scheme}://{rest.rstrip('/')}" if sep and rest.rstrip("/") else url

    def __fspath__(self) -> str:
        return self._url

    def __str__(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"UrlPath({self._url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __truediv__(self, part: str | os.PathLike) -> UrlPath:
        return UrlPath(posixpath.join(self._url, os.fspath(part)))

    @property
    def _key(self) -> str:
        return self._url.partition("://")[2]

    @property
    def name(self) -> str:
        return posixpath.basename(self._key)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> UrlPath:
        scheme = self._url.partition("://")[0]
        head = posixpath.dirname(self._key)
        return UrlPath(f"{scheme}://{head}") if head else self


def as_path(p: str | os.PathLike) -> Path | UrlPath:
    """``UrlPath`` for a remote URL (``s3://...``), ``Path`` otherwise (``file://`` stripped)."""
    from mmdata.storage import is_remote
    from mmdata.storage.local import to_path

    if isinstance(p, UrlPath):
        return p
    return UrlPath(os.fspath(p)) if is_remote(p) else to_path(p)
