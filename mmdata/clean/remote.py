"""Clean's inputs and outputs on object storage (CONTRACT s.6): remote inputs are staged to a local
temp file under the same base name (the fast reader maps a local file; output bytes name inputs by
base name only, so they cannot tell; errors name the URL), outputs go through
``mmdata.storage.atomic_output``; one run at a time writes an s3:// OUT (``output_lock``)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmdata import storage
from mmdata.errors import InputError
from mmdata.storage import UrlPath, as_path

__all__ = ["as_path", "check_reachable", "is_remote", "one_writer", "output_lock", "staged_input", "UrlPath"]

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
    otherwise (``storage.local_copies``: removed on every exit, errors inside name the URL, not the
    copy). InputError naming the URL when it is missing or a prefix."""
    if not storage.is_remote(path):
        yield Path(path)
        return
    check_reachable(path)
    with storage.local_copies([path], expected="a JSON or JSON Lines file") as (local,):
        yield local


def output_lock(out_path: Path | UrlPath) -> contextlib.AbstractContextManager[None]:
    """One writer of an ``s3://`` OUT at a time: a lease on ``.NAME.mmdata-clean.lock`` beside it
    (``storage.hold_lease``, as shard's ``--out``). A local OUT takes no lock (its files are each
    replaced atomically)."""
    if not storage.is_remote(out_path):
        return contextlib.nullcontext()
    check_reachable(out_path)  # endpoint, credentials, bucket: one line naming OUT
    prefix, _, name = os.fspath(out_path).rstrip("/").rpartition("/")
    return storage.hold_lease(f"{prefix}/.{name}.mmdata-clean.lock", "mmdata clean")


def one_writer(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make a clean source hold ``output_lock(out_path)`` for its whole run."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kw: Any) -> Any:
        with output_lock(as_path(sig.bind(*args, **kw).arguments["out_path"])):
            return fn(*args, **kw)

    return run
