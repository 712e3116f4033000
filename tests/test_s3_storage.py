"""S3Backend against a real local S3 endpoint (moto s3_server, signatures checked): every method,
atomic visibility and abort, and the one-line errors for the three ways a setup goes wrong."""

from __future__ import annotations

import os
import time

import pytest
from s3_server import free_port

from mmdata.storage.base import Backend, StorageError
from mmdata.storage.s3 import S3Backend, split_url


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh backend with the s3_server's variables set; yields (backend, 's3://bucket/<test prefix>')."""
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    prefix = f"s3://{s3_server.bucket}/t{time.monotonic_ns()}"
    return S3Backend(), prefix


def _uploads(s3_server) -> list:
    return s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket).get("Uploads", [])


def test_protocol_and_url_split():
    assert isinstance(S3Backend(), Backend)
    assert split_url("s3://b/x/y/") == ("b", "x/y")
    assert split_url("s3://b") == ("b", "")
    with pytest.raises(StorageError, match="no bucket"):
        split_url("s3:///x")


def test_write_read_list_remove(s3):
    be, p = s3
    data = bytes(range(256)) * 40
    with be.atomic_output(f"{p}/d/a.bin") as f:
        assert f.write(data[:1000]) == 1000
        f.write(data[1000:])
        assert f.tell() == len(data)
    with be.atomic_output(f"{p}/d/b.txt") as f:
        f.write(b"hi")
    with be.atomic_output(f"{p}/d/sub/c") as f:
        pass  # an empty object is still an object
    assert be.read_bytes(f"{p}/d/a.bin") == data
    assert be.read_range(f"{p}/d/a.bin", 300, 17) == data[300:317]
    assert be.size(f"{p}/d/a.bin") == len(data) and be.size(f"{p}/d/sub/c") == 0
    with be.open_input(f"{p}/d/a.bin") as f:
        f.seek(5000)
        assert f.read(10) == data[5000:5010]
        assert f.read_at(4, 2) == data[2:6]
    assert be.listdir(f"{p}/d") == ["a.bin", "b.txt", "sub"]
    assert be.listdir(f"{p}/nothing") == []
    assert be.exists(f"{p}/d/a.bin") and be.exists(f"{p}/d") and not be.exists(f"{p}/d/zz")
    assert be.isdir(f"{p}/d") and be.isdir(f"{p}/d/sub") and not be.isdir(f"{p}/d/a.bin")
    assert not be.isdir(f"{p}/none")
    be.makedirs(f"{p}/new/dir")  # nothing to make on S3
    be.remove(f"{p}/d/b.txt")
    be.remove(f"{p}/d/b.txt")  # missing: not an error
    assert be.listdir(f"{p}/d") == ["a.bin", "sub"]
    with pytest.raises(FileNotFoundError):
        be.size(f"{p}/d/b.txt")
    with pytest.raises(FileNotFoundError):
        be.read_bytes(f"{p}/d/b.txt")


def test_replacing_an_object_reads_the_new_bytes(s3):
    be, p = s3
    for payload in (b"old" * 10, b"new!" * 5):
        with be.atomic_output(f"{p}/x") as f:
            f.write(payload)
        assert be.read_range(f"{p}/x", 0, len(payload)) == payload


def test_multipart_object_appears_only_when_complete(s3, s3_server, monkeypatch):
    be, p = s3
    monkeypatch.setattr("mmdata.storage.s3.PART_SIZE", 5 << 20)
    url = f"{p}/big.tar"
    chunk = os.urandom(1 << 20)
    with be.atomic_output(url) as f:
        f._part_size = 5 << 20
        for _ in range(12):  # 12 MiB: two full parts uploaded while the block runs
            f.write(chunk)
        assert not be.exists(url)  # parts are stored, but no object yet
        assert any(u["Key"].endswith("big.tar") for u in _uploads(s3_server))
    assert be.read_bytes(url) == chunk * 12
    assert not [u for u in _uploads(s3_server) if u["Key"].endswith("big.tar")]


def test_error_in_block_leaves_nothing(s3, s3_server):
    be, p = s3
    url = f"{p}/aborted.tar"
    with pytest.raises(ValueError), be.atomic_output(url) as f:
        f._part_size = 5 << 20
        f.write(os.urandom(11 << 20))  # two parts uploaded
        raise ValueError("the writer failed")
    with pytest.raises(ValueError), be.atomic_output(f"{p}/small") as f:
        f.write(b"a few bytes")
        raise ValueError
    assert not be.exists(url) and not be.exists(f"{p}/small")
    assert be.listdir(p) == []
    assert not [u for u in _uploads(s3_server) if p.split("/")[-1] in u["Key"]]


def test_error_keeps_the_previous_object(s3):
    be, p = s3
    with be.atomic_output(f"{p}/keep") as f:
        f.write(b"v1")
    with pytest.raises(KeyboardInterrupt), be.atomic_output(f"{p}/keep") as f:
        f.write(b"v2 partial")
        raise KeyboardInterrupt
    assert be.read_bytes(f"{p}/keep") == b"v1"


def test_abort_incomplete_uploads(s3, s3_server):
    be, p = s3
    bucket, key = split_url(f"{p}/left.tar")
    s3_server.client().create_multipart_upload(Bucket=bucket, Key=key)  # as if a run was killed mid-write
    assert be.abort_incomplete_uploads(p) == 1
    assert not [u for u in _uploads(s3_server) if u["Key"] == key]


def _one_line_error(fn, *args) -> tuple[str, float]:
    t = time.monotonic()
    with pytest.raises(StorageError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg, time.monotonic() - t


def test_missing_bucket(s3, s3_server):
    be, _ = s3
    msg, _ = _one_line_error(be.exists, "s3://no-such-bucket/x")
    assert msg.startswith("s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist")
    msg, _ = _one_line_error(be.listdir, "s3://no-such-bucket/x")
    assert "does not exist" in msg


def test_wrong_credentials(s3, monkeypatch):
    _, p = s3
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    msg, _ = _one_line_error(S3Backend().read_bytes, f"{p}/x")
    assert msg.startswith(f"{p}/x: access denied") and "AWS_SECRET_ACCESS_KEY" in msg
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY")
    msg, _ = _one_line_error(S3Backend().atomic_output(f"{p}/y").__enter__)
    assert "AWS_ACCESS_KEY_ID" in msg


def test_unreachable_endpoint(s3, monkeypatch):
    _, p = s3
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    msg, took = _one_line_error(S3Backend().exists, f"{p}/x")
    assert f"cannot reach S3 endpoint http://127.0.0.1:{port}" in msg and "AWS_ENDPOINT_URL" in msg
    assert msg.startswith(f"{p}/x: ")
    assert took < 30


def test_s3_specific_endpoint_wins(s3, monkeypatch, s3_server):
    _, p = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    assert S3Backend().listdir(p) == []


def test_move_is_a_server_side_copy_then_delete(s3):
    be, p = s3
    with be.atomic_output(f"{p}/m/old") as f:
        f.write(b"old bytes")
    with be.atomic_output(f"{p}/m/.stage/new") as f:
        f.write(b"new bytes" * 1000)
    assert be.read_range(f"{p}/m/old", 0, 3) == b"old"  # a cached reader of the name being replaced
    be.move(f"{p}/m/.stage/new", f"{p}/m/old")
    assert be.read_bytes(f"{p}/m/old") == b"new bytes" * 1000
    assert be.read_range(f"{p}/m/old", 0, 3) == b"new"
    assert not be.exists(f"{p}/m/.stage/new") and be.listdir(f"{p}/m") == ["old"]


def test_remove_tree_removes_nested_objects_and_nothing_beside(s3):
    from mmdata import storage

    be, p = s3
    for name in ("run/a.tar", "run/dcp/0.distcp", "run/dcp/.metadata", "run2/keep.tar", "runx"):
        with storage.atomic_output(f"{p}/{name}") as f:
            f.write(b"x")
    storage.remove_tree(f"{p}/run")
    assert storage.listdir(p) == ["run2", "runx"]
    assert storage.listdir(f"{p}/run2") == ["keep.tar"]
    storage.remove_tree(f"{p}/missing")  # a missing prefix is not an error


def test_remove_tree_of_a_local_folder(tmp_path):
    from mmdata import storage

    (tmp_path / "run" / "dcp").mkdir(parents=True)
    (tmp_path / "run" / "dcp" / "0.distcp").write_bytes(b"x")
    (tmp_path / "run2").mkdir()
    storage.remove_tree(tmp_path / "run")
    storage.remove_tree(tmp_path / "missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run2"]
