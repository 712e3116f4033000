"""Deterministic POSIX ustar bytes for webdataset shards: fixed metadata, so same input = same bytes.

Every member has mtime 0, uid/gid 0, empty uname/gname and mode 0o644; headers come from the
standard library's ``tarfile`` so any tar reader accepts them.
"""

from __future__ import annotations

import tarfile

__all__ = ["BLOCK", "RECORD", "member", "sample_bytes", "end_of_archive"]

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads the archive to a multiple of this


def _header(name: str, size: int) -> bytes:
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
