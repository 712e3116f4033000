"""Check every distinct image once, in parallel, with results kept per path for the ordered decision.

Reject rules 5-9 of docs/clean-rules.md: unsafe_path (lexical here, symlinks in the worker via
``os.path.realpath`` containment), missing_image, unreadable_image (full decode, JPEG via DCT-scaled
draft), image_too_small and bad_aspect_ratio (after EXIF orientation, applied when a result arrives).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import NamedTuple

from mmdata.clean.pool import worker_pool
from mmdata.images import DEFAULT_MAX_PIXELS, ImageError, ImageRoot, verify_image_bytes
from mmdata.records import unsafe_path_reason

__all__ = ["ImageChecker", "Verdict", "check_bytes", "check_paths", "check_real"]


class Verdict(NamedTuple):
    """One image's outcome: ``code`` None when usable; width/height after EXIF orientation (0 when
    not decoded)."""

    code: str | None
    detail: str
    width: int
    height: int


_ESCAPES = "resolves outside the images folder"

_CHUNK = 32  # paths per task: amortises inter-process traffic, small enough to balance the load


def _init_worker(max_pixels: int) -> None:
    # Our own pixel limit decides; Pillow's (2 x MAX_IMAGE_PIXELS raises) must not fire first.
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels >= 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1


def check_paths(root: str, paths: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Verdict]:
    """Check image paths (relative to the real, absolute ``root``) that passed the lexical test.

    Returns one verdict per path; size limits are not applied here (see ImageChecker).
    """
    home = ImageRoot(root)
    out: list[Verdict] = []
    for p in paths:
        real = home.resolve(p)
        if real is None:
            out.append(Verdict("unsafe_path", f"{p}: {_ESCAPES}", 0, 0))
            continue
        out.append(_named(check_real([real], max_pixels)[0], p))
    return out


def check_real(reals: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Verdict]:
    """Check resolved absolute paths (already inside the root): open and fully decode each. The
    detail does not name the path (the caller names it as the record wrote it)."""
    _init_worker(max_pixels)
    out: list[Verdict] = []
    for real in reals:
        try:
            with open(real, "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            out.append(Verdict("missing_image", "no such file", 0, 0))
            continue
        except IsADirectoryError:
            out.append(Verdict("missing_image", "is a directory", 0, 0))
            continue
        except OSError as e:
            out.append(Verdict("unreadable_image", f"cannot read: {e.strerror or e}", 0, 0))
            continue
        out.append(check_bytes(data, max_pixels))
    return out


def check_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Verdict:
    """The verdict of image bytes (a full decode; size rules are the checker's)."""
    try:
        info = verify_image_bytes(data, max_pixels)
    except ImageError as e:
        return Verdict(e.reason, e.detail, 0, 0)
    return Verdict(None, "", info.width, info.height)


class ImageChecker:
    """Distinct-file verdict cache fed by a process pool (its own, the caller's, or inline when ``workers == 1``).

    Files are keyed by their resolved real path, so ``a.jpg``, ``./a.jpg`` and a symlink to it are
    decoded once; ``cache`` maps each path as written to its verdict (the detail names that path).
    ``request(path)`` schedules a path once; ``get(path)`` is its final verdict (None while pending);
    ``wait_some()`` blocks until at least one more chunk is done. Size rules are applied on arrival,
    so a verdict is final. Results never depend on the number of workers.
    """

    def __init__(self, root: str, *, workers: int, min_side: int, max_aspect: float,
                 max_pixels: int = DEFAULT_MAX_PIXELS, on_done: Callable[[int], None] | None = None,
                 pool: ProcessPoolExecutor | None = None):
        self.home = ImageRoot(root)
        self.root = self.home.real
        self._by_real: dict[str, Verdict] = {}  # real path -> verdict (detail without the path)
        self._names: dict[str, list[str]] = {}  # real path in flight -> the paths as written that wait on it
        self.workers = max(1, workers)
        self.min_side = min_side
        self.max_aspect = max_aspect
        self.max_pixels = max_pixels
        self.on_done = on_done
        self.cache: dict[str, Verdict | None] = {}
        self.checked = 0
        self._pending: list[str] = []
        self._inflight: dict[Future, list[str]] = {}
        self._own = pool is None and self.workers > 1  # a pool of our own, started at the first chunk
        self._pool = pool

    def close(self) -> None:
        """Shut down the pool if this checker made it (a pool passed in belongs to the caller)."""
        if self._pool is not None and self._own:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def __enter__(self) -> ImageChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scheduling ----------------------------------------------------------------------------
    def request(self, path: str) -> None:
        """Schedule ``path`` for checking unless it is known or pending (a lexical failure, an escape
        through a symlink, or a file already checked under another name is final at once)."""
        if path in self.cache:
            return
        why = unsafe_path_reason(path)
        if why is not None:
            self.cache[path] = Verdict("unsafe_path", why, 0, 0)
            return
        real = self.home.resolve(path)
        if real is None:
            self.cache[path] = Verdict("unsafe_path", f"{path}: {_ESCAPES}", 0, 0)
            return
        v = self._by_real.get(real)
        if v is not None:
            self.cache[path] = _named(v, path)
            return
        self.cache[path] = None
        names = self._names.get(real)
        if names is not None:
            names.append(path)
            return
        self._names[real] = [path]
        self._pending.append(real)
        if len(self._pending) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        """Send the pending paths off (computed at once when inline)."""
        if not self._pending:
            return
        chunk, self._pending = self._pending, []
        if self._pool is None:
            if not self._own:
                self._store(chunk, check_real(chunk, self.max_pixels))
                return
            self._pool = worker_pool(self.workers)  # only now: a text-only run never forks
        while len(self._inflight) >= 3 * self.workers:  # back-pressure: keep the queue short
            self.wait_some()
        fut = self._pool.submit(check_real, chunk, self.max_pixels)
        self._inflight[fut] = chunk

    def wait_some(self) -> None:
        """Block until at least one in-flight chunk is finished (flushing pending paths first if idle)."""
        if not self._inflight:
            self.flush()
            if not self._inflight:
                return
        done, _ = wait(list(self._inflight), return_when=FIRST_COMPLETED)
        for fut in done:
            self._store(self._inflight.pop(fut), fut.result())

    def drain(self) -> None:
        """Finish every scheduled check."""
        self.flush()
        while self._inflight:
            self.wait_some()

    @property
    def busy(self) -> bool:
        return bool(self._pending or self._inflight)

    def _store(self, chunk: list[str], verdicts: list[Verdict]) -> None:
        ms, ma = self.min_side, self.max_aspect
        for real, v in zip(chunk, verdicts):
            if v.code is None:
                w, h = v.width, v.height
                short, long_ = (w, h) if w <= h else (h, w)
                if short < ms:
                    v = Verdict("image_too_small", f"{w}x{h}, shorter side {short} < {ms}", w, h)
                elif long_ / short > ma:
                    v = Verdict("bad_aspect_ratio", f"{w}x{h}, aspect {long_ / short:.1f} > {ma:g}", w, h)
            self._by_real[real] = v
            for p in self._names.pop(real):
                self.cache[p] = _named(v, p)
        self.checked += len(chunk)
        if self.on_done is not None:
            self.on_done(self.checked)

    def get(self, path: str) -> Verdict | None:
        return self.cache.get(path)


def _named(v: Verdict, path: str) -> Verdict:
    """A file's verdict as seen through ``path`` (the detail names the path as the record wrote it)."""
    return v if v.code is None else Verdict(v.code, f"{path}: {v.detail}", v.width, v.height)
