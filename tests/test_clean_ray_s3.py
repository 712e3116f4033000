"""`mmdata clean --engine ray` on the 2-node Ray cluster and `mmdata clean` on s3:// (moto): the same
OUT, rejects and report bytes as a local run; a dead --ray-address fails in one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_shard_writer import make_set

from mmdata.clean.pool import clean_engine
from mmdata.clean.sources.llava import clean_llava

MMDATA = [sys.executable, "-m", "mmdata.cli"]
NAMES = ("out.jsonl", "out.rejects.jsonl", "out.report.json")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A LLaVA file over generated images (passes and every image reject), and its local clean."""
    root = tmp_path_factory.mktemp("cleanray")
    src, img = make_set(root)
    local = root / "local"
    local.mkdir()
    clean_llava(src, img, local / "out.jsonl", workers=2)
    return src, img, {n: (local / n).read_bytes() for n in NAMES}


def test_ray_engine_gives_the_local_bytes(ray_cluster, data, tmp_path):
    src, img, want = data
    with clean_engine("ray", ray_cluster.address):
        report = clean_llava(src, img, tmp_path / "out.jsonl", workers=2)
    assert report.images_checked > 0 and report.rejected > 0
    assert {n: (tmp_path / n).read_bytes() for n in NAMES} == want


def test_cli_no_cluster_at_address(data, tmp_path):
    from s3_server import free_port

    src, img, _ = data
    addr = f"127.0.0.1:{free_port()}"
    p = subprocess.run([*MMDATA, "clean", "llava", str(src), "--images", str(img), "--out", str(tmp_path / "o.jsonl"),
                        "--engine", "ray", "--ray-address", addr, "-q"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().startswith(f"error: --ray-address {addr}: no Ray cluster there")
    assert len(p.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_cli_unknown_engine(data, tmp_path):
    src, img, _ = data
    p = subprocess.run([*MMDATA, "clean", "llava", str(src), "--images", str(img), "--out", str(tmp_path / "o.jsonl"),
                        "--engine", "spark", "-q"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--engine: unknown engine 'spark'" in p.stderr
