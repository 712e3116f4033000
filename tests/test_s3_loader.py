"""The packed loader reading shards from S3 (moto): the same batches and the same exact resume as
from the local folder, through the shard cache (bounded, shared by workers) or concurrent ranged reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from loader_helpers import all_rows, make_records, same_batch, write_shards

from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
from mmdata.loader.cache import DERIVED

SEQ = 384


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, s3_server):
    """The same shard folder locally and under s3://bucket/set."""
    local = write_shards(tmp_path_factory.mktemp("shards") / "a", make_records(40, seed=3, max_images=2),
                         samples_per_shard=5)
    c = s3_server.client()
    for p in sorted(Path(local).iterdir()):
        if p.is_file():
            c.put_object(Bucket=s3_server.bucket, Key=f"set/{p.name}", Body=p.read_bytes())
    return Path(local), f"s3://{s3_server.bucket}/set"


@pytest.fixture
def s3env(s3_server, monkeypatch, tmp_path):
    s3_server.use(monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the lengths/plan cache of a remote set
    return s3_server


def loader(path, tok, workers=0, **kw):
    kw.setdefault("seq_len", SEQ)
    kw.setdefault("window_samples", 10)
    return PackedLoader(path, tokenizer=tok, config=LoaderConfig(**kw), num_workers=workers)


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(same_batch(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("mode,workers", [("cache", 0), ("cache", 2), ("ranges", 0)])
def test_batches_equal_the_local_folder(sets, tok, s3env, tmp_path, mode, workers):
    local, url = sets
    want = all_rows(loader(local, tok, epochs=2))
    cache = tmp_path / "cache"
    limit = 4 * 30720  # room for 4 of the 8 shards (20-30 kB each): two epochs must evict and re-download
    got = all_rows(loader(url, tok, workers=workers, epochs=2, remote_read=mode, shard_cache_dir=str(cache),
                          cache_limit=limit))
    assert _same(got, want)
    left = [p for p in cache.iterdir() if p.name not in (".lock", DERIVED)]  # derived/: length and plan caches
    if mode == "cache":
        assert left and all(p.name.endswith(".tar") for p in left)  # no partial download left
        assert sum(p.stat().st_size for p in left) <= limit and len(left) < 8
    else:
        assert left == []


def test_exact_resume_from_s3(sets, tok, s3env, tmp_path):
    local, url = sets
    kw = dict(remote_read="cache", shard_cache_dir=str(tmp_path / "c"))
    first = loader(url, tok, **kw)
    head = all_rows(first, 5)
    state = first.state_dict()
    first.close()
    resumed = loader(url, tok, **kw)
    resumed.load_state_dict(state)
    tail = all_rows(resumed, 4)
    resumed.close()
    ref = all_rows(loader(local, tok), 9)
    assert _same(head + tail, ref)


def test_cache_limit_below_one_shard_is_one_line(sets, tok, s3env, tmp_path):
    from mmdata.errors import InputError

    _, url = sets
    with pytest.raises(InputError, match="--cache-limit 1,000 bytes is smaller than one shard"):
        all_rows(loader(url, tok, shard_cache_dir=str(tmp_path / "c"), cache_limit=1000, epochs=1), 1)


def _mmtrain(*argv: str, env: dict | None = None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mmtrain.cli", "run", "--device", "cpu", "--num-workers", "0",
                           "--seq-len", str(SEQ), "--global-batch-size", "1", "--log-interval", "1", *argv],
                          capture_output=True, text=True, timeout=300, env=env)


def test_mmtrain_trains_from_s3_with_cache_flags(sets, s3env, tmp_path):
    _, url = sets
    cache = tmp_path / "cache"
    p = _mmtrain("--shards", url, "--max-steps", "2", "--cache-dir", str(cache), "--cache-limit", "1MB",
                 env=dict(os.environ))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "lm loss:" in p.stdout + p.stderr
    assert any(n.name.endswith(".tar") for n in cache.iterdir())


def test_mmtrain_s3_errors_are_one_line(sets, s3env, tmp_path):
    _, url = sets
    p = _mmtrain("--shards", url, "--max-steps", "1", "--cache-limit", "lots", env=dict(os.environ))
    assert p.returncode == 2 and p.stderr.strip() == "error: --cache-limit: cannot read 'lots' (use e.g. 1GB, 500MB, 512MiB, 1000000)"
    p = _mmtrain("--shards", "s3://no-bucket/set", "--max-steps", "1", env=dict(os.environ))
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error: s3://no-bucket/set: bucket 'no-bucket' does not exist")
