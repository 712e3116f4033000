"""A strict, streaming reader for webdataset tar shards: members, grouped into samples, hashed as read.

Hand-written on purpose: the stdlib ``tarfile`` treats a corrupt or truncated header in the middle of
an archive as its end and stops without an error, which would let a damaged shard pass ``--verify``.
This reader reads every byte once, in order (so the sha256 comes for free), and names the offset of
any damage: a bad header checksum, a member cut short, garbage after the end-of-archive marker.
Formats read: ustar / POSIX (pax ``x`` headers: ``path`` and ``size``) and GNU long names (``L``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

BLOCK = 512
_FILE_TYPES = (b"0", b"\x00", b"7")


class TarFormatError(Exception):
    """The archive is damaged at ``offset``: ``message`` says how. ``key`` names the sample, if known."""

    def __init__(self, offset: int, message: str, key: str | None = None):
        self.pending: "RawSample | None" = None
        self.offset = offset
        self.message = message
        self.key = key
        super().__init__(f"at byte {offset}: {message}")


@dataclass
class Member:
    """One regular file in the archive: its name, the offset of its (first) header, and its bytes."""

    name: str
    offset: int
    data: bytes
    end: int  # offset just past the member's data padding


@dataclass
class RawSample:
    """The members sharing one key: ``files`` maps the extension (``json``, ``jpg``, ``0.jpg``) to bytes."""

    key: str
    offset: int
    end: int
    files: dict[str, bytes] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)


class HashingReader:
    """Wraps a binary file: counts and sha256-hashes every byte read through it."""

    def __init__(self, f: BinaryIO, hash_it: bool = True):
        self.f = f
        self.pos = 0
        self.sha = hashlib.sha256() if hash_it else None

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        if self.sha is not None:
            self.sha.update(data)
        return data

    def read_exact(self, n: int) -> bytes:
        """Read ``n`` bytes, fewer only at end of file."""
        parts = []
        left = n
        while left > 0:
            chunk = self.read(min(left, 16 << 20))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def drain(self) -> tuple[int, bool]:
        """Read to end of file; returns (bytes read, whether all of them were zero)."""
        total, zero = 0, True
        while True:
            chunk = self.read(1 << 20)
            if not chunk:
                return total, zero
            total += len(chunk)
            if zero and chunk.count(0) != len(chunk):
                zero = False


def _octal(field_: bytes, offset: int, what: str) -> int:
    if field_[:1] in (b"\x80", b"\xff"):  # GNU base-256 for big numbers
        n = int.from_bytes(field_[1:], "big")
        return -n if field_[:1] == b"\xff" else n
    s = field_.split(b"\x00", 1)[0].strip(b" ")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise TarFormatError(offset, f"tar header has an invalid {what} field {s[:20]!r}") from None


def _checksum_ok(hdr: bytes, offset: int) -> bool:
    stored = _octal(hdr[148:156], offset, "checksum")
    unsigned = sum(hdr[:148]) + 8 * 32 + sum(hdr[156:])
    return stored == unsigned


def _cstr(b: bytes) -> str:
    return b.split(b"\x00", 1)[0].decode("utf-8", errors="replace")


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            break
        rec = data[sp + 1 : pos + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
        pos += length
    return out


def iter_members(r: HashingReader, *, require_end: bool = True, base: int = 0) -> Iterator[Member]:
    """Yield the regular files of the archive read through ``r``, in order.

    Raises TarFormatError for a bad header, a member cut short, a missing end-of-archive marker
    (when ``require_end``) or non-zero bytes after it. ``base`` is added to reported offsets (for a
    slice read from the middle of a shard).
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    start: int | None = None  # offset of the first header of the current member (incl. pax / L)
    while True:
        off = base + r.pos
        hdr = r.read_exact(BLOCK)
        if not hdr:
            if require_end:
                raise TarFormatError(off, "archive ends without the end-of-archive marker (truncated?)")
            return
        if len(hdr) < BLOCK:
            raise TarFormatError(off, f"truncated: a tar header cut to {len(hdr)} of 512 bytes")
        if hdr.count(0) == BLOCK:
            nxt = r.read_exact(BLOCK)
            if require_end and len(nxt) < BLOCK:
                raise TarFormatError(off, "end-of-archive marker cut short (truncated?)")
            if nxt.count(0) != len(nxt):
                raise TarFormatError(off + BLOCK, "data after a zero block (damaged header?)")
            _, zero = r.drain()
            if not zero:
                raise TarFormatError(off, "non-zero bytes after the end-of-archive marker")
            return
        if not _checksum_ok(hdr, off):
            raise TarFormatError(off, "tar header checksum does not match (damaged or not a tar)")
        size = _octal(hdr[124:136], off, "size")
        typ = hdr[156:157]
        if typ in _FILE_TYPES and "size" in pax and pax["size"].isdigit():
            size = int(pax["size"])  # pax size overrides (members over 8 GB)
        name = _cstr(hdr[0:100])
        if hdr[257:262] == b"ustar":
            prefix = _cstr(hdr[345:500])
            if prefix:
                name = prefix + "/" + name
        padded = -(-size // BLOCK) * BLOCK
        data = r.read_exact(padded) if typ in _FILE_TYPES or typ in (b"x", b"L", b"g") else None
        if data is None:  # directory, link, ...: skip its data (normally none)
            skipped = r.read_exact(padded)
            if len(skipped) < padded:
                raise TarFormatError(off, f"truncated: {name!r} needs {padded} bytes, {len(skipped)} left")
            start = None
            long_name, pax = None, {}
            continue
        if len(data) < padded:
            if len(data) >= size:  # the member is whole; the zero padding to the next 512-byte block is cut
                raise TarFormatError(off, f"ends inside the padding after member {name!r} ({len(data) - size} of "
                                          f"{padded - size} padding bytes): the tar is truncated", split_key(name)[0])
            raise TarFormatError(off, f"truncated: member {name!r} has {len(data)} of {size} bytes",
                                 split_key(name)[0])
        if start is None:
            start = off
        body = data[:size]
        if typ == b"x":
            pax = _pax(body)
            continue
        if typ == b"g":
            start = None
            continue
        if typ == b"L":
            long_name = _cstr(body)
            continue
        name = pax.get("path", long_name or name)
        yield Member(name=name, offset=start, data=body, end=base + r.pos)
        start, long_name, pax = None, None, {}


def split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file's base name."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def group_samples(members: Iterator[Member]) -> Iterator[RawSample]:
    """Group consecutive members with the same key into samples (webdataset's grouping)."""
    cur: RawSample | None = None
    try:
        for m in members:
            key, ext = split_key(m.name)
            if cur is None or key != cur.key:
                if cur is not None:
                    yield cur
                cur = RawSample(key=key, offset=m.offset, end=m.end)
            elif ext in cur.files:
                raise TarFormatError(m.offset, f"member {m.name!r} repeated in one sample", key)
            cur.files[ext] = m.data
            cur.names.append(m.name)
            cur.end = m.end
    except TarFormatError as e:
        e.pending = cur  # the sample being read when the damage was found (it may be complete)
        raise
    if cur is not None:
        yield cur


def read_sample_at(path: str, offset: int, nbytes: int) -> RawSample:
    """Read one sample by its index position (``offset``, ``nbytes``): one seek, no full scan."""
    import io

    with open(path, "rb") as f:
        f.seek(offset)
        blob = f.read(nbytes)
    r = HashingReader(io.BytesIO(blob), hash_it=False)
    samples = list(group_samples(iter_members(r, require_end=False, base=offset)))
    if len(samples) != 1:
        raise TarFormatError(offset, f"expected one sample in {nbytes} bytes, found {len(samples)}")
    return samples[0]
