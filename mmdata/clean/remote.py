"""Clean's inputs and outputs on object storage (CONTRACT s.6): remote inputs are staged to a local
temp file under the same base name (the fast reader maps a local file; output bytes name inputs by
base name only, so they cannot tell), outputs go through ``mmdata.storage.atomic_output``."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mmdata import storage
from mmdata.errors import InputError
from mmdata.storage import UrlPath, as_path

__all__ = ["as_path", "check_reachable", "is_remote", "staged_input", "UrlPath"]

is_remote = storage.is_remote


def check_reachable(url: str | os.PathLike) -> None:
    """Fail in one line (endpoint, credentials, bucket) before any work when ``url`` is remote."""
    if not storage.is_remote(url):
        return
    check = getattr(storage.backend_for(url), "check", None)
    if check is not None:
        check(os.fspath(url))


@contextlib.contextmanager
def staged_input(path: Path | UrlPath) -> Iterator[Path]:
    """``path`` itself when local; a remote file copied to a temp folder under its own base name
    (removed on exit) otherwise. InputError naming the URL when it is missing or a prefix."""
    if not storage.is_remote(path):
        yield Path(path)
        return
    url = os.fspath(path)
    check_reachable(url)
    if storage.isdir(url):
        raise InputError(url, "is a folder (a prefix), expected a JSON or JSON Lines file")
    if not storage.exists(url):
        raise InputError(url, "no such object")
    tmp = Path(tempfile.mkdtemp(prefix="mmdata-clean-"))
    try:
        dst = tmp / path.name
        with storage.open_input(url) as src, open(dst, "wb") as f:
            shutil.copyfileobj(src, f, 8 << 20)
        yield dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
