"""Shards that are missing, truncated or replaced by another shard's bytes (issue 14 item 1, CONTRACT
s.9): the loader and `mmtrain run` stop with one line naming the shard and the fix, never train on
what is left; a truncation is skipped only within the bad-sample budget, and said so."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_shard_writer import make_set

from mmdata.errors import InputError
from mmdata.loader import LoaderConfig, PackedLoader
from mmdata.shard import write_shards

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("lf")
    src, img = make_set(root, n=12)
    out = root / "shards"
    write_shards([src], img, out, samples_per_shard=3, workers=1)
    text = root / "text.json"  # text-only samples of one length: every shard has the same size
    text.write_text(json.dumps([{"id": f"t{i}", "conversations": [{"from": "human", "value": f"Question {i:03d}?"},
                                                                  {"from": "gpt", "value": f"Answer {i:03d}."}]}
                                for i in range(12)]))
    same = root / "same-size"
    write_shards([text], img, same, samples_per_shard=3, workers=1)
    return out, same


def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / src.name
    shutil.copytree(src, dst)
    return dst


def _loader(out: Path, tmp: Path, budget: int = 100) -> PackedLoader:
    cfg = LoaderConfig(seq_len=2048, cache_dir=str(tmp / "cache"), bad_sample_budget=budget)
    return PackedLoader(out, config=cfg, num_workers=0)


def _samples(ld: PackedLoader) -> int:
    it = iter(ld)
    for _ in range(ld.len_epoch_rows()):
        next(it)
    return ld.stats()["samples"]


def _fix_named(msg: str, out: Path) -> None:
    assert f"mmdata inspect {out} --verify" in msg and "--resume" in msg and "\n" not in msg


def test_a_missing_shard_is_an_error_naming_it(made, tmp_path):
    out = _copy(made[0], tmp_path)
    (out / "shard-000002.tar").unlink()
    with pytest.raises(InputError) as e:
        _loader(out, tmp_path)
    assert str(e.value).startswith(f"{out / 'shard-000002.tar'}: shard file is missing (index.parquet lists 3 samples")
    _fix_named(str(e.value), out)
    with pytest.raises(InputError, match="shard file is missing"):  # a budget never covers a missing file
        _loader(out, tmp_path, budget=10**6)


@pytest.mark.parametrize("which", [0, 1])
def test_a_shard_replaced_by_another_shards_bytes_is_an_error(made, tmp_path, which):
    out = _copy(made[which], tmp_path)
    a, b = out / "shard-000000.tar", out / "shard-000001.tar"
    same_size = a.stat().st_size == b.stat().st_size
    assert same_size == (which == 1)  # the second set checks the header, not just the size
    shutil.copyfile(b, a)
    with pytest.raises(InputError) as e:
        _loader(out, tmp_path)
    assert str(e.value).startswith(f"{a}: ")
    _fix_named(str(e.value), out)


def test_a_truncated_shard_is_skipped_only_within_the_budget(made, tmp_path, caplog):
    out = _copy(made[0], tmp_path)
    whole = _samples(_loader(out, tmp_path / "a"))
    tar = out / "shard-000001.tar"
    data = tar.read_bytes()
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(out / "index.parquet").to_pylist() if r["shard"] == tar.name]
    tar.write_bytes(data[:rows[1]["offset"] + 100])  # the 2nd and 3rd samples are cut off
    with pytest.raises(InputError) as e:
        _loader(out, tmp_path / "b", budget=1)
    assert str(e.value).startswith(f"{tar}: truncated: 2 sample(s) past the end of damaged shards, over "
                                   "bad_sample_budget 1")
    with caplog.at_level(logging.WARNING, logger="mmdata.loader"):
        ld = _loader(out, tmp_path / "c", budget=2)
    assert f"{tar} is truncated: 2 sample(s) past its end left out (within bad_sample_budget 2)" in caplog.text
    assert _samples(ld) == whole - 2


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "mmtrain.cli", "run", "--device", "cpu", "--num-workers", "0",
                           "--global-batch-size", "1", "--max-steps", "1", "--seq-len", "2048", *argv],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_mmtrain_stops_on_missing_and_swapped_shards_with_one_line(made, tmp_path):
    out = _copy(made[0], tmp_path)
    for n in ("shard-000001.tar", "shard-000002.tar", "shard-000003.tar"):
        (out / n).unlink()
    r = _cli("--shards", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {out / 'shard-000001.tar'}: shard file is missing (index.parquet lists 3 samples in it): run "
        f"`mmdata inspect {out} --verify`, then re-shard, or `mmdata shard ... --resume` into the same --out to "
        "rewrite what is damaged"]
    same = _copy(made[1], tmp_path)
    shutil.copyfile(same / "shard-000002.tar", same / "shard-000000.tar")
    r = _cli("--shards", str(same))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "OverflowError" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "replaced by another shard's bytes" in r.stderr


def test_derived_caches_go_under_the_cache_base_keyed_by_the_manifest_never_into_the_shards(made, tmp_path):
    import hashlib

    out = _copy(made[0], tmp_path)
    before = sorted(p.name for p in out.rglob("*"))
    base = tmp_path / "base"
    cfg = LoaderConfig(seq_len=2048, shard_cache_dir=str(base))
    whole = _samples(PackedLoader(out, config=cfg, num_workers=0))
    assert sorted(p.name for p in out.rglob("*")) == before
    key = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()[:16]
    assert {p.name.split("-")[0] for p in (base / "derived" / key).iterdir()} == {"plan", "text"}
    blocked = tmp_path / "a-file"  # a cache base that cannot be a folder: no cache, same samples
    blocked.write_bytes(b"")
    cfg = LoaderConfig(seq_len=2048, shard_cache_dir=str(blocked))
    assert _samples(PackedLoader(out, config=cfg, num_workers=0)) == whole
