"""The clean report (counts per reason) and the atomic writers of OUT and the rejects file."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from mmdata.errors import InputError
from mmdata.io import WriteError, atomic_write, write_json
from mmdata.records import REASONS

__all__ = ["CleanReport", "Sink", "default_paths", "dump", "out_format_of"]


def _finite(obj: Any) -> Any:
    """NaN / infinity as null, as orjson writes them (the stdlib would write invalid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def dump(obj: Any) -> bytes:
    """orjson, falling back to the stdlib for what orjson refuses (lone surrogates, ints over 64 bits,
    values nested deeper than 255 levels: anything a JSON reader parsed, up to orjson's 1024 levels)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20_000))  # _finite and the encoder recurse once per level
        try:
            return json.dumps(_finite(obj), separators=(",", ":")).encode()
        finally:
            sys.setrecursionlimit(limit)


def out_format_of(path: Path) -> str:
    """``jsonl`` for a ``.jsonl`` OUT, ``json`` (one array) for ``.json``; anything else is an error."""
    suf = path.suffix.lower()
    if suf == ".jsonl":
        return "jsonl"
    if suf == ".json":
        return "json"
    raise InputError(path, "output must end in .json (a JSON array) or .jsonl (JSON Lines)")


def default_paths(out: Path, rejects: Path | None, report: Path | None) -> tuple[Path, Path]:
    """``OUT.rejects.jsonl`` and ``OUT.report.json`` beside OUT unless given (OUT a local `Path` or
    an ``s3://`` `UrlPath`; the defaults are of the same kind)."""
    from mmdata.storage import as_path

    text = str(out)
    stem = text[:len(text) - len(out.suffix)] if out.suffix else text
    return (rejects or as_path(f"{stem}.rejects.jsonl"), report or as_path(f"{stem}.report.json"))


class Sink:
    """Stream framed records (see ``mmdata.clean.engine.frame``) to a JSON array (one record a line)
    or JSON Lines, atomically, in ~1 MB writes. Same bytes as ``mmdata.io.RecordWriter``.

    ``write_block(data, n)`` takes ``n`` records already framed: JSON array records each start with
    ``,\\n`` (dropped before the first), JSON Lines records each end with a newline.
    """

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self._cm = atomic_write(path)
        self._f: IO[bytes] | None = None
        self._parts: list[Any] = []
        self._size = 0
        self.count = 0

    def __enter__(self) -> Sink:
        self._f = self._cm.__enter__()
        if self.fmt == "json":
            self._f.write(b"[")
        return self

    def write_block(self, data: Any, n: int) -> None:
        if not n:
            return
        if self.fmt == "json" and not self.count:
            self._parts.append(b"\n")
            data = data[2:]
        self._parts.append(data)
        self.count += n
        self._size += len(data)
        if self._size >= 1 << 20:
            self.flush()

    def write(self, data: bytes) -> None:
        """One unframed record."""
        self.write_block(b",\n" + data if self.fmt == "json" else data + b"\n", 1)

    def flush(self) -> None:
        if self._parts:
            try:
                if len(self._parts) == 1:
                    self._f.write(self._parts[0])  # type: ignore[union-attr]
                else:
                    self._f.writelines(self._parts)  # type: ignore[union-attr]
            except OSError as e:  # disk full, quota: one line naming the file, not a traceback
                raise WriteError(self.path, f"cannot write: {e.strerror or e}") from None
            self._parts.clear()
            self._size = 0

    def __exit__(self, et, ev, tb) -> bool:
        if et is None:
            try:
                self.flush()
                if self.fmt == "json":
                    self._f.write(b"\n]\n" if self.count else b"]\n")  # type: ignore[union-attr]
            except BaseException as e:  # the atomic writer still removes its temp file and names OUT
                self._cm.__exit__(type(e), e, e.__traceback__)
                raise
        return bool(self._cm.__exit__(et, ev, tb))


# What helps when one reason takes a large share of the rejects: (the flag, what it does).
_REMEDIES = {
    "duplicate_id": ("--rekey", "makes repeated ids unique as <id>-<n>"),
    "missing_image": ("--images", "image paths are relative to it; is it the right folder?"),
    "image_too_small": ("--min-side", "sets the shortest side kept"),
    "bad_aspect_ratio": ("--max-aspect", "sets the largest long/short ratio kept"),
    "text_too_long": ("--max-text-chars", "sets the longest text kept"),
    "malformed": ("--input-format", "forces the input shape; the details say what the records look like"),
}
_NOT_FOR = {"coco": {"duplicate_id", "text_too_long", "malformed"}, "hf": {"missing_image", "malformed"}}
HINT_SHARE = 0.2  # a reason holding more than this share of the rejects (and HINT_MIN of them) gets a hint
HINT_MIN = 10


@dataclass
class CleanReport:
    """What one clean run did: every input unit is counted once as written or rejected (by reason)."""

    input: int = 0
    written: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    images_checked: int = 0
    kind: str = "llava"
    source: str = ""
    out: str = ""
    rejects: str = ""
    report: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``input``, ``written``, ``rejected`` (``written + rejected == input``), a count per reason at
        the top level (CONTRACT s.2), the same under ``by_reason``, then the rest."""
        d = asdict(self)
        for k in ("out", "rejects", "report"):  # names only: reruns elsewhere give the same bytes
            d[k] = Path(d[k]).name if d[k] else ""
        extra = d.pop("extra")
        head = {k: d.pop(k) for k in ("input", "written", "rejected")}
        head.update({code: self.by_reason.get(code, 0) for code in REASONS})
        head.update(d)
        head.update(extra)
        hints = self.hints()
        if hints:
            head["hints"] = hints
        return head

    def hints(self) -> list[str]:
        """One line per reason holding more than `HINT_SHARE` of the rejects, naming the flag that helps."""
        out = []
        for code in REASONS:
            n = self.by_reason.get(code, 0)
            remedy = _REMEDIES.get(code)
            if n < HINT_MIN or remedy is None or n <= HINT_SHARE * self.rejected \
                    or code in _NOT_FOR.get(self.kind, ()):
                continue
            flag, what = remedy
            out.append(f"{n:,} of {self.rejected:,} rejects ({100 * n / self.rejected:.0f}%) are {code}: {flag} {what}")
        return out

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())
