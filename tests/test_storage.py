"""The storage seam (docs/DESIGN.md, STORAGE-API): dispatch by scheme, atomic outputs that leave
nothing behind on failure, one-line errors for what cannot be reached."""

from __future__ import annotations

import os

import pytest

from mmdata import storage
from mmdata.errors import InputError
from mmdata.storage.base import Backend, StorageError
from mmdata.storage.local import LocalBackend


def test_local_paths_and_file_urls_go_to_the_local_backend(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"0123456789")
    for url in (p, str(p), f"file://{p}"):
        assert not storage.is_remote(url)
        assert isinstance(storage.backend_for(url), LocalBackend)
        assert storage.read_bytes(url) == b"0123456789"
        assert storage.read_range(url, 3, 4) == b"3456"
        assert storage.size(url) == 10 and storage.exists(url) and not storage.isdir(url)
        with storage.open_input(url) as f:
            f.seek(8)
            assert f.read() == b"89"
    assert storage.local_path(f"file://{p}") == p
    assert storage.is_remote("s3://bkt/x") and storage.local_path("s3://bkt/x") is None
    assert storage.join("s3://bkt/a", "b", "c.tar") == "s3://bkt/a/b/c.tar"
    assert storage.join(str(tmp_path), "c.tar") == str(tmp_path / "c.tar")
    assert isinstance(storage.backend_for(p), Backend)


def test_listdir_makedirs_remove(tmp_path):
    d = tmp_path / "x" / "y"
    storage.makedirs(d)
    storage.makedirs(d)  # exists: fine
    for n in ("b", "a", "c"):
        (d / n).write_bytes(b"")
    assert storage.listdir(d) == ["a", "b", "c"]
    storage.remove(d / "a")
    storage.remove(d / "a")  # missing is not an error
    assert storage.listdir(d) == ["b", "c"]


def test_atomic_output_appears_only_on_success_and_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "o.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_output(out) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["o.bin"]
    with storage.atomic_output(out) as f:
        f.write(b"new")
    assert out.read_bytes() == b"new" and os.listdir(tmp_path) == ["o.bin"]


def test_unknown_scheme_is_one_line_naming_the_url():
    with pytest.raises(StorageError) as e:
        storage.read_bytes("gopher://host/x")
    assert isinstance(e.value, InputError)
    assert str(e.value).startswith("gopher://host/x: unknown storage scheme 'gopher'") and "\n" not in str(e.value)


def test_backends_are_cached_per_process(monkeypatch, tmp_path):
    a = storage.backend_for(tmp_path)
    assert storage.backend_for(tmp_path) is a
    monkeypatch.setattr(os, "getpid", lambda: -12345)  # what a forked worker sees: a new pid
    assert storage.backend_for(tmp_path) is not a


def test_io_atomic_write_is_the_storage_implementation(tmp_path):
    from mmdata.io import WriteError, atomic_write

    assert WriteError is storage.WriteError
    with atomic_write(tmp_path / "t.txt", "w", encoding="utf-8") as f:
        f.write("héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    with pytest.raises(WriteError) as e:
        with atomic_write(tmp_path / "t.txt" / "below"):
            pass
    assert str(e.value).startswith(str(tmp_path / "t.txt" / "below") + ": cannot write")


def test_move_renames_and_refuses_to_cross_storages(tmp_path):
    (tmp_path / "a").write_bytes(b"new")
    (tmp_path / "b").write_bytes(b"old")
    storage.move(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"new" and not (tmp_path / "a").exists()
    with pytest.raises(StorageError, match="cannot move across storages"):
        storage.move(tmp_path / "b", "s3://bucket/b")
