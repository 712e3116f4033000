"""Our hand-built ustar headers are byte-for-byte what the standard library's tarfile writes."""

from __future__ import annotations

import io
import tarfile

import pytest

from mmdata.format.tar import (
    BLOCK,
    RECORD,
    _header,
    _tarfile_header,
    end_of_archive,
    member,
    sample_bytes,
)


@pytest.mark.parametrize("name", ["000000000.json", "000000013.0.jpg", "123456789.12.jpg", "é.json", "x" * 100])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 123_456_789, 8**11 - 1])
def test_header_matches_tarfile(name, size):
    h = _header(name, size)
    assert len(h) == BLOCK and h == _tarfile_header(name, size)


def test_a_sample_reads_back_with_tarfile():
    body = sample_bytes([("000000001.json", b'{"id": "a"}'), ("000000001.jpg", b"\xff\xd8" * 300)])
    assert len(body) == 3 * BLOCK + 2 * BLOCK  # header + 1 block, header + 2 blocks
    blob = body + end_of_archive(len(body))
    assert len(blob) % RECORD == 0
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:
        got = [(m.name, t.extractfile(m).read(), m.mtime, m.mode) for m in t.getmembers()]
    assert got == [("000000001.json", b'{"id": "a"}', 0, 0o644), ("000000001.jpg", b"\xff\xd8" * 300, 0, 0o644)]
    assert member("a", b"") == _tarfile_header("a", 0)
