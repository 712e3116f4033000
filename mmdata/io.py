"""Atomic writes and streaming JSON / JSON Lines in and out (orjson out, constant memory in)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import orjson

from mmdata import storage
from mmdata.errors import InputError
from mmdata.records import Unrepresentable
from mmdata.storage.base import WriteError
from mmdata.storage.local import atomic_file

__all__ = [
    "atomic_write",
    "check_output_path",
    "dumps",
    "loads",
    "read_json",
    "parse_json",
    "iter_json_records",
    "RecordWriter",
    "WriteError",
    "write_json",
]

_CHUNK = 8 << 20  # characters read per step when streaming a JSON array
_MAX_ELEMENT = 256 << 20  # a single array element larger than this is reported, not buffered forever


def dumps(obj: Any, *, indent: bool = False, sort_keys: bool = False) -> bytes:
    """orjson serialisation (UTF-8, no ASCII escaping); deterministic for the same object."""
    opt = 0
    if indent:
        opt |= orjson.OPT_INDENT_2
    if sort_keys:
        opt |= orjson.OPT_SORT_KEYS
    return orjson.dumps(obj, option=opt)


loads = orjson.loads


def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None) -> AbstractContextManager[IO[Any]]:
    """Write to a temp file beside ``path`` and rename it into place only when the block succeeds.

    A crash leaves either the old file or none, never a half-written one. A file-system error of the
    write itself (no such folder, permission, a directory in the way, disk full) is an InputError
    naming ``path``. One implementation: ``mmdata.storage`` (a remote url gets its backend's
    ``atomic_output``, binary only).
    """
    if storage.is_remote(path):
        if mode != "wb":
            raise InputError(str(path), "text-mode writes to remote storage are not supported")
        return storage.atomic_output(path)
    return atomic_file(path, mode, encoding)


def check_output_path(path: str | Path, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Fail early (InputError naming ``path``) when ``path`` cannot be written: it is a directory, it
    is one of ``inputs``, a parent is a file, or the nearest existing parent refuses a new file
    (probed with a temp file, so read-only mounts, /proc and permissions are all caught). Creates
    nothing that stays."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory, expected a file to write")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(path, "cannot write: permission denied")
    real = os.path.realpath(path)
    for p in inputs:
        if os.path.realpath(p) == real:
            raise InputError(path, "would overwrite the input")
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            raise InputError(path, f"cannot write: {parent} is a dangling link")
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(path, f"cannot write: {parent} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise InputError(path, f"cannot write in {parent}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)
    return path


def write_json(path: str | Path, obj: Any, *, indent: bool = True, sort_keys: bool = False) -> None:
    """Atomically write one JSON document (with a trailing newline)."""
    with atomic_write(path) as f:
        f.write(dumps(obj, indent=indent, sort_keys=sort_keys))
        f.write(b"\n")


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def read_json(path: str | Path) -> Any:
    """Read a whole JSON document (a local path or a URL, through the storage seam); a missing file or
    invalid JSON is an InputError with line:col."""
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a JSON file") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    return parse_json(data, path)


def parse_json(data: bytes, path: str | Path) -> Any:
    """One JSON document from bytes read from ``path``; invalid JSON is an InputError with line:col."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 BOM, as the record readers (and `clean llava`) allow
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        # orjson reports a character position; recompute line/col on the decoded text.
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # orjson's position is not where the bad byte is
            raise _utf8_error_at(path) from None
        line, col = _line_col(text, min(e.pos, len(text)))
        raise InputError(path, f"invalid JSON: {e.msg}", line, col) from None


@dataclass
class _Cursor:
    """A read position in a growing text buffer, with line/column bookkeeping for errors.

    The buffer is only compacted when it is refilled, so advancing is O(consumed), not O(buffer).
    """

    f: Any
    buf: str = ""
    pos: int = 0
    line: int = 1  # line number at ``pos``
    line_start: int = 0  # buffer index where the current line starts (may be negative after compaction)
    eof: bool = False

    def fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        if self.pos:
            self.buf = self.buf[self.pos :]
            self.line_start -= self.pos
            self.pos = 0
        self.buf += chunk
        return True

    def advance(self, n: int) -> None:
        new = self.pos + n
        nl = self.buf.count("\n", self.pos, new)
        if nl:
            self.line += nl
            self.line_start = self.buf.rfind("\n", self.pos, new) + 1
        self.pos = new

    def where(self, at: int) -> tuple[int, int]:
        """Line and column of buffer index ``at`` (>= pos)."""
        nl = self.buf.count("\n", self.pos, at)
        if nl:
            return self.line + nl, at - self.buf.rfind("\n", self.pos, at)
        return self.line, at - self.line_start + 1

    def peek(self) -> str:
        return self.buf[self.pos : self.pos + 1]


_WS = " \t\r\n"


def _skip_ws(cur: _Cursor) -> None:
    while True:
        buf, i, n = cur.buf, cur.pos, len(cur.buf)
        while i < n and buf[i] in _WS:
            i += 1
        cur.advance(i - cur.pos)
        if cur.pos < n or not cur.fill():
            return


def _iter_array(path: Path, f: IO[str]) -> Iterator[tuple[int, int, Any]]:
    """Yield (index, line, element) from a top-level JSON array, reading it in chunks."""
    decode = json.JSONDecoder().raw_decode
    cur = _Cursor(f=f)
    _skip_ws(cur)
    if cur.peek() != "[":  # pragma: no cover - caller checked
        raise InputError(path, "expected a JSON array", *cur.where(cur.pos))
    cur.advance(1)
    index = 0
    expect_value = True
    while True:
        _skip_ws(cur)
        ch = cur.peek()
        if not ch:
            raise InputError(path, "invalid JSON: unexpected end of file (unterminated array)", *cur.where(cur.pos))
        if ch == "]":
            if expect_value and index > 0:
                raise InputError(path, "invalid JSON: trailing comma before ']'", *cur.where(cur.pos))
            cur.advance(1)
            _skip_ws(cur)
            if cur.peek():
                raise InputError(path, "invalid JSON: extra data after the array", *cur.where(cur.pos))
            return
        if not expect_value:
            if ch != ",":
                raise InputError(path, "invalid JSON: expected ',' or ']' between elements", *cur.where(cur.pos))
            cur.advance(1)
            expect_value = True
            continue
        while True:
            try:
                obj, end = decode(cur.buf, cur.pos)
            except json.JSONDecodeError as e:
                if len(cur.buf) - cur.pos < _MAX_ELEMENT and cur.fill():
                    continue  # the element may just run past the buffer: read more and retry
                raise InputError(path, f"invalid JSON: {e.msg}", *cur.where(e.pos)) from None
            except RecursionError:  # the stdlib decoder recurses per level; orjson stops at 1024 too
                raise InputError(path, "invalid JSON: depth limit exceeded (a value nested too deeply)",
                                 *cur.where(cur.pos)) from None
            except ValueError:  # valid JSON, but an integer of more digits than int() converts
                end = _TEXT_NUMBERS.raw_decode(cur.buf, cur.pos)[1]
                obj = _UNREPRESENTABLE
            # A number or literal that ends exactly at the buffer end may continue in the next chunk.
            if end >= len(cur.buf) and cur.fill():
                continue
            break
        if obj is _UNREPRESENTABLE:
            obj = unrepresentable(cur.buf[cur.pos:end], cur.line)
        yield index, cur.line, obj
        index += 1
        cur.advance(end - cur.pos)
        expect_value = False


_UNREPRESENTABLE = object()
_TEXT_NUMBERS = json.JSONDecoder(parse_int=str, parse_float=str)  # numbers kept as their text


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def unrepresentable(text: str, line: int) -> Unrepresentable | None:
    """``text`` (one record) as an `Unrepresentable` when it is valid JSON that orjson or Python's int
    cannot hold (a number of thousands of digits); None when it is not valid JSON at all."""
    lengths: list[int] = []

    def number(s: str) -> str:
        lengths.append(len(s))
        return s

    try:
        obj = json.loads(text, parse_int=number, parse_float=number, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
    longest = max(lengths, default=0)
    return Unrepresentable(text, f"line {line}: holds a number of {longest} characters, more than the JSON "
                                 "readers represent exactly; write such a value as a string", rid)


def _line_error_col(raw: bytes, pos: int) -> int:
    """The 1-based column on ``raw`` (one line) of orjson's error position ``pos`` (a character
    index into the decoded line, not a byte offset: checked with non-ASCII text); an error at the
    end of the line (truncated record) points just past its last character, not onto the next line."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    return min(pos, len(text)) + 1


def _utf8_error(raw: bytes) -> tuple[int, str] | None:
    """(1-based character column, what is wrong) of the first invalid UTF-8 byte of one line, else None."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return len(raw[: e.start].decode("utf-8")) + 1, f"not UTF-8 text: invalid byte 0x{raw[e.start]:02x} ({e.reason})"
    return None


def _utf8_error_at(path: Path) -> InputError:
    """An InputError at the line and column of the first invalid UTF-8 byte of ``path``."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            bad = _utf8_error(raw)
            if bad is not None:
                return InputError(path, bad[1], lineno, bad[0])
    return InputError(path, "not UTF-8 text")


def _iter_lines(path: Path, f: IO[bytes]) -> Iterator[tuple[int, int, Any]]:
    index = 0
    for lineno, raw in enumerate(f, 1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 BOM, as the JSON array reader (utf-8-sig) and the fast splitter allow
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            bad = _utf8_error(raw)
            if bad is not None:
                raise InputError(path, bad[1], lineno, bad[0]) from None
            obj = unrepresentable(raw.decode("utf-8").rstrip("\r\n"), lineno)
            if obj is None:
                raise InputError(path, f"invalid JSON: {e.msg}", lineno, _line_error_col(raw, e.pos)) from None
        yield index, lineno, obj
        index += 1


def _first_char(path: Path) -> str:
    with open(path, "rb") as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                return ""
            s = chunk.lstrip()
            if s.startswith(b"\xef\xbb\xbf"):
                s = s[3:].lstrip()
            if s:
                return chr(s[0])


def iter_json_records(path: str | Path) -> Iterator[tuple[int, int, Any]]:
    """Stream the records of a JSON array file or a JSON Lines file as (index, line, record).

    The format is detected from the content (``[`` starts an array, anything else is JSON Lines),
    so a ``.json`` file holding JSON Lines also works. Memory stays constant in the file size.
    Invalid JSON raises InputError naming the file, line and column.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a JSON or JSON Lines file")
    first = _first_char(path)
    if first == "":
        raise InputError(path, "empty file, expected a JSON array or JSON Lines")
    if first == "[":
        with open(path, encoding="utf-8-sig", errors="strict", newline="") as f:
            try:
                yield from _iter_array(path, f)
            except UnicodeDecodeError:
                raise _utf8_error_at(path) from None
    else:
        with open(path, "rb") as f:
            yield from _iter_lines(path, f)


class RecordWriter:
    """Stream records to ``.json`` (one JSON array, a record per line) or ``.jsonl``, atomically.

    Use as a context manager; the file appears under its name only if the block succeeds.
    """

    def __init__(self, path: str | Path, fmt: str | None = None):
        self.path = Path(path)
        self.fmt = fmt or ("jsonl" if self.path.suffix.lower() == ".jsonl" else "json")
        if self.fmt not in ("json", "jsonl"):
            raise InputError(self.path, f"unknown output format {self.fmt!r} (use .json or .jsonl)")
        self.count = 0
        self._cm: Any = None
        self._f: IO[bytes] | None = None

    def __enter__(self) -> "RecordWriter":
        self._cm = atomic_write(self.path)
        self._f = self._cm.__enter__()
        if self.fmt == "json":
            self._f.write(b"[")
        return self

    def write(self, record: Any) -> None:
        data = orjson.dumps(record)
        assert self._f is not None
        if self.fmt == "json":
            self._f.write(b"\n" if self.count == 0 else b",\n")
            self._f.write(data)
        else:
            self._f.write(data)
            self._f.write(b"\n")
        self.count += 1

    def write_many(self, records: list[Any]) -> None:
        for r in records:
            self.write(r)

    def __exit__(self, et, ev, tb) -> bool:
        assert self._f is not None
        if et is None and self.fmt == "json":
            self._f.write(b"\n]\n" if self.count else b"]\n")
        return bool(self._cm.__exit__(et, ev, tb))
