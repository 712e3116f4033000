"""The shard tar format in one place: deterministic ustar writing, and ONE strict reader.

Writing: fixed metadata (mtime 0, uid/gid 0, empty uname/gname, mode 0o644), so same input = same
bytes; headers are built directly (the standard library's ``tarfile`` builder costs ~50x more).

Reading: hand-written on purpose. The stdlib ``tarfile`` treats a corrupt or truncated header in the
middle of an archive as its end and stops without an error, which would let a damaged shard pass
``--verify``. ``parse_header`` checks every header (checksum, size field); ``iter_members`` reads
every byte once, in order (so the sha256 comes for free), and names the offset of any damage. The
verifier, the loader's byte-range reads and the length readers all use it. Formats read: ustar /
POSIX (pax ``x`` headers: ``path`` and ``size``) and GNU long names (``L``).
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

__all__ = ["BLOCK", "RECORD", "member", "sample_bytes", "end_of_archive", "archive_size", "TarFormatError",
           "Header", "parse_header", "Member", "RawSample", "HashingReader", "iter_members", "split_key",
           "group_samples", "parse_sample", "read_sample_at", "read_first_member"]

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads the archive to a multiple of this


# The fixed parts of our ustar header (what tarfile.TarInfo.tobuf(USTAR_FORMAT) writes for mode
# 0644, uid/gid 0, mtime 0, empty uname/gname, a regular file): only name, size and checksum vary.
_MODE_IDS = b"0000644\x00" + b"0000000\x00" * 2  # mode, uid, gid
_MTIME = b"00000000000\x00"
_AFTER_CHKSUM = b"0" + b"\x00" * 100 + b"ustar\x0000" + b"\x00" * (64 + 16 + 155)  # devmajor/minor empty

_PAD = b"\x00" * (BLOCK - 156 - len(_AFTER_CHKSUM))
_FIXED_SUM = 8 * 32 + sum(_MODE_IDS) + sum(_MTIME) + sum(_AFTER_CHKSUM)  # checksum field = 8 spaces


def _header(name: str, size: int) -> bytes:
    """The 512-byte ustar header, built directly (tarfile's builder costs ~50x more per member)."""
    raw = name.encode("utf-8")
    if len(raw) > 100 or size >= 8**11:
        return _tarfile_header(name, size)
    size_field = b"%011o\x00" % size
    chksum = _FIXED_SUM + sum(raw) + sum(size_field)
    return b"".join((raw.ljust(100, b"\x00"), _MODE_IDS, size_field, _MTIME, b"%06o\x00 " % chksum, _AFTER_CHKSUM, _PAD))


def _tarfile_header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def member(name: str, data: bytes) -> bytes:
    """One member: a 512-byte header, the data, zero padding to the next block."""
    pad = -len(data) % BLOCK
    return b"".join((_header(name, len(data)), data, b"\0" * pad))


def sample_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """The consecutive tar members of one sample, in the given order."""
    return b"".join(member(n, d) for n, d in members)


def end_of_archive(size: int) -> bytes:
    """Two zero blocks, then zeros up to a whole record, for an archive of ``size`` bytes so far."""
    end = size + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-end % RECORD))


def archive_size(size: int) -> int:
    """The final file size of an archive whose members take ``size`` bytes (end blocks and padding included)."""
    end = size + 2 * BLOCK
    return end + (-end % RECORD)


# ---------------------------------------------------------------------------------------------
# reading

_FILE_TYPES = (b"0", b"\x00", b"7")
_META_TYPES = (b"x", b"L", b"g")  # pax, GNU long name, pax global


class TarFormatError(Exception):
    """The archive is damaged at ``offset``: ``message`` says how. ``key`` names the sample, if known."""

    def __init__(self, offset: int, message: str, key: str | None = None):
        self.pending: "RawSample | None" = None
        self.offset = offset
        self.message = message
        self.key = key
        super().__init__(f"at byte {offset}: {message}")


@dataclass(slots=True)
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


@dataclass(slots=True)
class Header:
    """A checked 512-byte header: the member name (ustar prefix joined), data size and type flag."""

    name: str
    size: int
    type: bytes


def parse_header(hdr: bytes, offset: int) -> Header:
    """Parse one full, non-zero 512-byte header at ``offset``; TarFormatError if it is damaged."""
    if not _checksum_ok(hdr, offset):
        raise TarFormatError(offset, "tar header checksum does not match (damaged or not a tar)")
    size = _octal(hdr[124:136], offset, "size")
    if size < 0:
        raise TarFormatError(offset, f"tar header has a negative size {size}")
    name = _cstr(hdr[0:100])
    if hdr[257:262] == b"ustar":
        prefix = _cstr(hdr[345:500])
        if prefix:
            name = prefix + "/" + name
    return Header(name, size, hdr[156:157])


def _end_of_archive(r: HashingReader, off: int, require_end: bool) -> None:
    """After a zero block at ``off``: the second zero block, then nothing but zeros."""
    nxt = r.read_exact(BLOCK)
    if require_end and len(nxt) < BLOCK:
        raise TarFormatError(off, "end-of-archive marker cut short (truncated?)")
    if nxt.count(0) != len(nxt):
        raise TarFormatError(off + BLOCK, "data after a zero block (damaged header?)")
    _, zero = r.drain()
    if not zero:
        raise TarFormatError(off, "non-zero bytes after the end-of-archive marker")


def _read_data(r: HashingReader, h: Header, off: int) -> bytes:
    """The member's data (its padding read and checked, not returned)."""
    padded = -(-h.size // BLOCK) * BLOCK
    data = r.read_exact(padded)
    if len(data) < padded:
        if h.type not in _FILE_TYPES and h.type not in _META_TYPES:
            raise TarFormatError(off, f"truncated: {h.name!r} needs {padded} bytes, {len(data)} left")
        if len(data) >= h.size:  # the member is whole; the zero padding to the next 512-byte block is cut
            raise TarFormatError(off, f"ends inside the padding after member {h.name!r} ({len(data) - h.size} of "
                                      f"{padded - h.size} padding bytes): the tar is truncated", split_key(h.name)[0])
        raise TarFormatError(off, f"truncated: member {h.name!r} has {len(data)} of {h.size} bytes",
                             split_key(h.name)[0])
    return data[:h.size]


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
            _end_of_archive(r, off, require_end)
            return
        h = parse_header(hdr, off)
        if h.type in _FILE_TYPES and "size" in pax and pax["size"].isdigit():
            h = Header(h.name, int(pax["size"]), h.type)  # pax size overrides (members over 8 GB)
        body = _read_data(r, h, off)
        if h.type not in _FILE_TYPES and h.type not in _META_TYPES:  # directory, link, ...: skipped
            start, long_name, pax = None, None, {}
            continue
        start = off if start is None else start
        if h.type == b"x":
            pax = _pax(body)
        elif h.type == b"g":
            start = None
        elif h.type == b"L":
            long_name = _cstr(body)
        else:
            yield Member(name=pax.get("path", long_name or h.name), offset=start, data=body, end=base + r.pos)
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


class BytesReader(HashingReader):
    """``HashingReader`` over bytes already in memory (one sample's byte range): slices, no copies of
    chunks, no hashing."""

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0
        self.sha = None

    def read(self, n: int) -> bytes:
        data = self.buf[self.pos:self.pos + n]
        self.pos += len(data)
        return data

    def read_exact(self, n: int) -> bytes:
        return self.read(n)


def parse_sample(buf: bytes, base: int = 0) -> list[Member]:
    """The members of one sample's bytes (``offset``/``nbytes`` of an index row): every header checked,
    no end-of-archive marker expected. TarFormatError on damage."""
    return list(iter_members(BytesReader(buf), require_end=False, base=base))


def read_sample_at(path: str, offset: int, nbytes: int) -> RawSample:
    """Read one sample by its index position (``offset``, ``nbytes``): one ranged read, no full scan."""
    from mmdata import storage

    blob = storage.read_range(path, offset, nbytes)
    samples = list(group_samples(iter(parse_sample(blob, base=offset))))
    if len(samples) != 1:
        raise TarFormatError(offset, f"expected one sample in {nbytes} bytes, found {len(samples)}")
    return samples[0]


def read_first_member(f: BinaryIO, offset: int) -> bytes:
    """Data of the member whose header is at ``offset`` in an open shard (a sample's ``.json``: the
    writer puts it first). TarFormatError on a damaged header or a short read."""
    f.seek(offset)
    hdr = f.read(BLOCK)
    if len(hdr) < BLOCK or hdr.count(0) == BLOCK:
        raise TarFormatError(offset, "no tar header here (truncated shard?)")
    h = parse_header(hdr, offset)
    data = f.read(h.size)
    if len(data) < h.size:
        raise TarFormatError(offset, f"truncated: member {h.name!r} has {len(data)} of {h.size} bytes")
    return data
