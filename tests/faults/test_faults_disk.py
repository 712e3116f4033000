"""A full disk and unwritable outputs, made for real (CONTRACT s.9): RLIMIT_FSIZE with SIGXFSZ ignored
(every write past the limit fails with EFBIG), a small tmpfs (ENOSPC), and folders that refuse new
entries even to root (`chattr +i`, else a read-only bind mount; chmod when not root). Each is one
line naming the path, exit 2, no traceback, no temp file left, and the previous output untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import SHARD_OPTS

import faultkit as fk


def _shard(src, out: Path, *extra: str, **kw) -> fk.Run:
    return fk.mmdata("shard", src["llava_jsonl"], "--images", src["images"], "--out", out, *SHARD_OPTS, *extra, **kw)


def _clean(inp: Path, images: Path, out: Path, **kw) -> fk.Run:
    return fk.mmdata("clean", "llava", inp, "--images", images, "--out", out, "--workers", "1", "-q", **kw)


# ---------------------------------------------------------------------------------------------
# full disk


def test_shard_on_a_full_disk_is_one_line_and_keeps_the_previous_output(src, ref_shards, tmp_path):
    ref, _ = ref_shards
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    before = fk.tree(out)
    r = _shard(src, out, fsize=50_000)  # every shard is ~90 kB: the first one cannot be written
    fk.assert_user_error(r, str(out))
    assert fk.tree(out) == before, fk.diff(fk.tree(out), before)


def test_shard_into_a_small_tmpfs_is_one_line_exit_2_and_leaves_no_temp_file(src, tmp_path):
    with fk.tiny_fs(tmp_path / "fs", "160k") as fs:
        out = fs / "out"
        r = _shard(src, out)
        fk.assert_user_error(r, str(out))
        assert fk.strays(out) == []


def test_clean_on_a_full_disk_is_one_line_and_keeps_the_previous_output(clean_src, tmp_path):
    out = tmp_path / "out.jsonl"
    first = _clean(clean_src["llava_json"], clean_src["images"], out)  # the .json twin: the same records
    assert first.rc == 0, first.explain()
    before = fk.tree(tmp_path)
    r = _clean(clean_src["llava_jsonl"], clean_src["images"], out, fsize=100_000)  # OUT is ~3 MB
    fk.assert_user_error(r, str(out))
    assert fk.tree(tmp_path) == before, fk.diff(fk.tree(tmp_path), before)


@pytest.mark.slow
def test_train_save_on_a_full_disk_is_one_line_and_leaves_no_temp_checkpoint(train_shards, tmp_path):
    shards = train_shards
    ck = tmp_path / "ck"
    r = fk.mmtrain("run", "--shards", shards, "--seq-len", "512", "--global-batch-size", "2", "--max-steps", "1",
                   "--device", "cpu", "--num-workers", "0", "--save", ck, fsize=1_000_000)  # model.pt is ~5 MB
    fk.assert_user_error(r, str(ck))
    assert fk.strays(ck) == []


# ---------------------------------------------------------------------------------------------
# unwritable outputs


def test_clean_into_an_unwritable_folder_is_one_line_exit_2(dirty, tmp_path):
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    with fk.unwritable(out_dir) as how:
        r = _clean(dirty["llava_json"], dirty["images"], out_dir / "out.json")
        fk.assert_user_error(r, str(out_dir / "out.json"))
    assert fk.tree(out_dir) == {}, how


def test_shard_into_an_unwritable_folder_is_one_line_exit_2(src, ref_shards, tmp_path):
    ref, _ = ref_shards
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    before = fk.tree(out)
    with fk.unwritable(out) as how:
        r = _shard(src, out)
        fk.assert_user_error(r, str(out))
    assert fk.tree(out) == before, f"{how}: {fk.diff(fk.tree(out), before)}"


@pytest.mark.slow
def test_train_on_a_read_only_shard_folder_writes_nothing_into_it(ref_shards, tmp_path):
    """A data folder may be read-only or shared by many jobs: the loader's length and plan caches go
    under --cache-dir/derived/<manifest sha256>, never into --shards."""
    import hashlib

    shards = tmp_path / "shards"
    shutil.copytree(ref_shards[0], shards)
    before = fk.tree(shards)
    cache = tmp_path / "cache"
    argv = ("run", "--shards", shards, "--seq-len", "512", "--global-batch-size", "2", "--max-steps", "1",
            "--device", "cpu", "--num-workers", "0", "--cache-dir", cache)
    with fk.unwritable(shards) as how:
        r = fk.mmtrain(*argv)
    assert r.rc == 0 and "Traceback" not in r.stderr, f"{how}\n{r.explain()}"
    r = fk.mmtrain(*argv)  # writable: still untouched
    assert r.rc == 0, r.explain()
    assert fk.tree(shards) == before, fk.diff(fk.tree(shards), before)
    key = hashlib.sha256((shards / "manifest.json").read_bytes()).hexdigest()[:16]
    assert {p.name.split("-")[0] for p in (cache / "derived" / key).iterdir()} == {"plan", "text"}


@pytest.mark.slow
def test_train_into_an_unwritable_save_folder_fails_before_training(train_shards, tmp_path):
    shards = train_shards
    ck = tmp_path / "ck"
    ck.mkdir()
    with fk.unwritable(ck):
        r = fk.mmtrain("run", "--shards", shards, "--seq-len", "512", "--global-batch-size", "2", "--max-steps", "2",
                       "--log-interval", "1", "--device", "cpu", "--num-workers", "0", "--save", ck)
    fk.assert_user_error(r, str(ck))
    assert "iteration" not in r.stdout, "trained before finding out that --save cannot be written"
