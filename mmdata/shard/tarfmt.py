"""Deterministic POSIX ustar bytes for webdataset shards: fixed metadata, so same input = same bytes.

Every member has mtime 0, uid/gid 0, empty uname/gname and mode 0o644; headers come from the
standard library's ``tarfile`` so any tar reader accepts them.
"""

from __future__ import annotations

import tarfile

__all__ = ["BLOCK", "RECORD", "member", "sample_bytes", "end_of_archive", "archive_size"]

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
