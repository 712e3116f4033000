"""Split a JSON array or JSON Lines file into raw per-record byte strings, fast and in constant memory.

The split is not a parse: each piece is parsed later (orjson, in worker processes). JSON Lines split
on newlines; a JSON array is split at its top-level commas, found with vectorised numpy passes
(string-aware: escaped quotes and backslash runs are handled) over 8 MB chunks. Anything unusual
raises `NotFast`, and the caller falls back to `mmdata.io.iter_json_records`, which reads the file
exactly and reports errors with line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["NotFast", "iter_raw_batches"]

_CHUNK = 8 << 20
_WS = b" \t\r\n"


class NotFast(Exception):
    """The fast splitter cannot vouch for this input; read it with the exact reader instead."""


def _kind(f) -> tuple[str, bytes]:
    """("array" | "lines", the bytes read so far with any BOM / leading white space removed)."""
    head = b""
    while True:
        chunk = f.read(1 << 16)
        if not chunk:
            return "lines", b""
        head += chunk
        s = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        t = s.lstrip(_WS)
        if t:
            return ("array", t) if t[:1] == b"[" else ("lines", s)


def _batched_lines(f, data: bytes, batch: int) -> Iterator[list[bytes]]:
    # Empty lines are dropped here; a line of only white space ("\r", " ") is passed on and makes the
    # parser refuse it, so such files take the exact path (which skips it, as JSON Lines readers do).
    out: list[bytes] = []
    carry = data
    while True:
        chunk = f.read(_CHUNK)
        if chunk:
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()
        else:
            lines, carry = carry.split(b"\n"), b""
        out.extend(filter(None, lines))
        while len(out) >= batch:
            yield out[:batch]
            del out[:batch]
        if not chunk:
            break
    if out:
        yield out


_OPEN, _CLOSE, _COMMA, _QUOTE, _BACKSLASH = 1, 2, 3, 4, 5
_TABLE = bytearray(256)  # byte -> class, applied with bytes.translate (C speed, no numpy gather)
for _ch, _cls in ((b"[", _OPEN), (b"{", _OPEN), (b"]", _CLOSE), (b"}", _CLOSE), (b",", _COMMA),
                  (b'"', _QUOTE), (b"\\", _BACKSLASH)):
    _TABLE[_ch[0]] = _cls
_TABLE = bytes(_TABLE)


def _top_level_cuts(data: bytes) -> tuple[np.ndarray, int]:
    """Positions of the top-level commas in ``data`` (which starts just inside the array, outside
    any string), and the position of the array's closing ``]`` (-1 when not in ``data``)."""
    cls = np.frombuffer(data.translate(_TABLE), dtype=np.uint8)  # the class of every byte
    pos = np.flatnonzero(cls > 0)  # the interesting bytes only, from here on
    c = cls[pos]
    is_quote = c == _QUOTE
    quotes = pos[is_quote]
    if len(quotes):
        bs = pos[c == _BACKSLASH]
        if len(bs):
            # a quote is escaped when the run of backslashes right before it has odd length
            k = np.searchsorted(bs, quotes)  # backslashes before each quote
            has = (k > 0) & (bs[np.maximum(k - 1, 0)] == quotes - 1)
            if has.any():
                run_start = np.ones(len(bs), dtype=bool)
                run_start[1:] = np.diff(bs) != 1
                run_id = np.cumsum(run_start) - 1
                starts = bs[run_start]
                length = quotes[has] - starts[run_id[k[has] - 1]]
                escaped = np.zeros(len(quotes), dtype=bool)
                escaped[np.flatnonzero(has)[length % 2 == 1]] = True
                quotes = quotes[~escaped]
    smask = (c != _QUOTE) & (c != _BACKSLASH)
    struct = pos[smask]
    sc = c[smask]
    if len(quotes):
        keep = np.searchsorted(quotes, struct) % 2 == 0  # outside strings
        struct, sc = struct[keep], sc[keep]
    delta = (sc == _OPEN).astype(np.int64) - (sc == _CLOSE)
    depth = 1 + np.cumsum(delta)  # depth after each structural character
    ends = np.flatnonzero(depth == 0)
    commas = (sc == _COMMA) & (depth == 1)
    if len(ends):
        e = ends[0]
        if data[int(struct[e])] != 93:  # ']'
            raise NotFast("unbalanced brackets")
        commas[e:] = False
        return struct[commas], int(struct[e])
    return struct[commas], -1


def _batched_array(f, data: bytes, batch: int) -> Iterator[list[bytes]]:
    carry = data[1:]  # after '['
    out: list[bytes] = []
    first = True
    eof = False
    while True:
        if not eof:
            chunk = f.read(_CHUNK)
            eof = not chunk
            carry += chunk
        cuts, end = _top_level_cuts(carry)
        if end < 0 and not eof and not len(cuts):
            continue  # one element longer than what we have: read more
        if end < 0 and eof:
            raise NotFast("unterminated array")
        stop = end if end >= 0 else (int(cuts[-1]) if len(cuts) else 0)
        prev = 0
        for c in cuts.tolist():
            out.append(carry[prev:c])
            prev = c + 1
        if end >= 0:
            last = carry[prev:end]
            if last.strip(_WS):
                out.append(last)
            elif len(cuts) or not first:
                raise NotFast("trailing comma")
            if carry[end + 1:].strip(_WS) or f.read(1 << 16).strip(_WS):
                raise NotFast("data after the array")
            if out:
                yield out
            return
        first = first and not len(cuts)
        carry = carry[stop + 1:] if len(cuts) else carry
        while len(out) >= batch:
            yield out[:batch]
            del out[:batch]


def iter_raw_batches(path: str | Path, batch: int = 1000) -> Iterator[list[bytes]]:
    """Batches of raw record bytes, in file order (blank JSON Lines skipped, like the exact reader)."""
    with open(path, "rb") as f:
        kind, data = _kind(f)
        if kind == "array":
            yield from _batched_array(f, data, batch)
        else:
            yield from _batched_lines(f, data, batch)
