"""The clean report (counts per reason) and the atomic writers of OUT and the rejects file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from mmdata.errors import InputError
from mmdata.io import atomic_write, write_json
from mmdata.records import REASONS

__all__ = ["CleanReport", "Sink", "default_paths", "dump", "out_format_of"]


def _finite(obj: Any) -> Any:
    """NaN / infinity as null, as orjson writes them (the stdlib would write invalid JSON)."""
    if isinstance(obj, float) and obj != obj or obj in (float("inf"), float("-inf")):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def dump(obj: Any) -> bytes:
    """orjson, falling back to the stdlib for what orjson refuses (lone surrogates, ints over 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(_finite(obj), separators=(",", ":")).encode()


def out_format_of(path: Path) -> str:
    """``jsonl`` for a ``.jsonl`` OUT, ``json`` (one array) for ``.json``; anything else is an error."""
    suf = path.suffix.lower()
    if suf == ".jsonl":
        return "jsonl"
    if suf == ".json":
        return "json"
    raise InputError(path, "output must end in .json (a JSON array) or .jsonl (JSON Lines)")


def default_paths(out: Path, rejects: Path | None, report: Path | None) -> tuple[Path, Path]:
    """``OUT.rejects.jsonl`` and ``OUT.report.json`` beside OUT unless given."""
    stem = out.with_suffix("")
    return (rejects or Path(f"{stem}.rejects.jsonl"), report or Path(f"{stem}.report.json"))


class Sink:
    """Stream pre-serialised records to a JSON array (one record a line) or JSON Lines, atomically.

    Same framing as ``mmdata.io.RecordWriter``; takes bytes so the caller serialises once, and
    writes them 1024 at a time (a write per record costs more than the record). ``append`` is the
    hot-loop entry: records are counted and framed when flushed.
    """

    _BATCH = 1024

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self._cm = atomic_write(path)
        self._f: IO[bytes] | None = None
        self._parts: list[bytes] = []
        self.append = self._parts.append
        self._done = 0

    @property
    def count(self) -> int:
        return self._done + len(self._parts)

    def __enter__(self) -> "Sink":
        self._f = self._cm.__enter__()
        if self.fmt == "json":
            self._f.write(b"[")
        return self

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        if len(self._parts) >= self._BATCH:
            self.flush()

    def flush(self) -> None:
        parts = self._parts
        if not parts:
            return
        f = self._f
        if self.fmt == "json":
            f.write(b",\n" if self._done else b"\n")  # type: ignore[union-attr]
            f.write(b",\n".join(parts))  # type: ignore[union-attr]
        else:
            parts.append(b"")
            f.write(b"\n".join(parts))  # type: ignore[union-attr]
            parts.pop()
        self._done += len(parts)
        parts.clear()

    def __exit__(self, et, ev, tb) -> bool:
        if et is None:
            self.flush()
            if self.fmt == "json":
                self._f.write(b"\n]\n" if self._done else b"]\n")  # type: ignore[union-attr]
        return bool(self._cm.__exit__(et, ev, tb))


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
        d = asdict(self)
        for k in ("out", "rejects", "report"):  # names only: reruns elsewhere give the same bytes
            d[k] = Path(d[k]).name if d[k] else ""
        extra = d.pop("extra")
        d.update(extra)
        return d

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())
