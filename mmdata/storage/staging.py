"""Local copies of remote inputs, for readers that need a real file (clean's fast reader maps one).

A copy keeps its input's base name (outputs name inputs by base name only, so they cannot tell) and
lives in ``$TMPDIR/mmdata-stage-<host>-<pid>-XXXX/``. It is removed when the with-block exits, however
it exits; SIGKILL runs no cleanup, so the next run on the same host removes the folders of processes
that are gone. An error raised inside the block that names a copy names the original URL instead
(an ``InputError``'s line and column are kept; an ``OSError``'s file name is mapped too).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from mmdata.errors import InputError

__all__ = ["local_copies", "sweep_dead_copies", "STAGE_PREFIX"]

STAGE_PREFIX = "mmdata-stage-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_dead_copies(tmp: str | os.PathLike | None = None) -> int:
    """Remove this host's staging folders whose process is gone (a SIGKILLed run's); returns how many."""
    root = Path(tmp or tempfile.gettempdir())
    pat = re.compile(rf"^{re.escape(STAGE_PREFIX + _host())}-(\d+)-")
    n = 0
    with contextlib.suppress(OSError), os.scandir(root) as it:
        for e in it:
            m = pat.match(e.name)
            if m and e.is_dir(follow_symlinks=False) and not _alive(int(m.group(1))):
                shutil.rmtree(e.path, ignore_errors=True)
                n += 1
    return n


def _name_originals(e: BaseException, copies: dict[str, str]) -> None:
    """Rewrite ``e`` in place so that it names each URL where it named that URL's copy."""
    def sub(s: str) -> str:
        for copy, url in copies.items():
            s = s.replace(copy, url)
        return s

    if isinstance(e, InputError):
        e.path = sub(e.path) if e.path else e.path
        e.message = sub(e.message)
        e.args = (e.format(),)
    elif isinstance(e, OSError) and e.filename:
        e.filename = sub(os.fspath(e.filename))
    else:
        e.args = tuple(sub(a) if isinstance(a, str) else a for a in e.args)


def _copy(url: str, dst: Path, expected: str) -> None:
    from mmdata import storage

    if storage.isdir(url):
        raise InputError(url, f"is a folder (a prefix), expected {expected}")
    if not storage.exists(url):
        raise InputError(url, "no such object")
    with storage.open_input(url) as src, open(dst, "wb") as f:
        shutil.copyfileobj(src, f, 8 << 20)


@contextlib.contextmanager
def local_copies(paths: Sequence[str | os.PathLike], expected: str = "a file") -> Iterator[list]:
    """``paths`` with each remote one replaced by a local copy (a ``Path`` under its own base name);
    local ones are passed through. Copies are removed on exit; errors inside name the URLs."""
    from mmdata import storage

    if not any(storage.is_remote(p) for p in paths):
        yield list(paths)
        return
    sweep_dead_copies()
    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{_host()}-{os.getpid()}-"))
    copies: dict[str, str] = {}
    try:
        out: list = []
        for i, p in enumerate(paths):
            if not storage.is_remote(p):
                out.append(p)
                continue
            url = os.fspath(p)
            dst = tmp / str(i) / url.rstrip("/").rsplit("/", 1)[-1]
            dst.parent.mkdir()
            copies[str(dst)] = url
            copies.setdefault(os.path.realpath(dst), url)
            _copy(url, dst, expected)
            out.append(dst)
        try:
            yield out
        except BaseException as e:
            _name_originals(e, copies)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
