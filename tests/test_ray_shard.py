"""`mmdata shard --engine ray` on a real 2-node Ray cluster: the same bytes as --engine local with no
extra flag, also when a worker is SIGKILLed mid-job, and straight to S3 (the workers get the driver's
AWS_* variables)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_shard_writer import make_set, tree_bytes

from mmdata import storage
from mmdata.engine.ray_engine import RayEngine, wait_for_nodes
from mmdata.shard.writer import write_shards

pytest.importorskip("ray")
MMDATA = [sys.executable, "-m", "mmdata.cli"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rayshard")
    src, img = make_set(root)
    local = root / "local"
    write_shards([src], img, local, samples_per_shard=7, workers=1)
    return src, img, local


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_cluster


def test_ray_engine_gives_the_local_bytes(cluster, data, tmp_path):
    src, img, local = data
    out = tmp_path / "ray"
    report = write_shards([src], img, out, samples_per_shard=7, engine="ray", ray_address=cluster.address)
    assert report.samples == 16
    assert tree_bytes(out) == tree_bytes(local)


def test_local_ray_and_s3_give_the_same_folder_with_no_extra_flag(cluster, data, tmp_path, monkeypatch):
    """The default layout (no --samples-per-shard), one job split into parts by --max-shard-bytes:
    --engine local, --engine ray to a local folder and --engine ray to S3, byte for byte."""
    from s3_server import moto_s3

    src, img, _ = data
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    a = write_shards([src], img, local, max_shard_bytes=100_000, workers=2)
    assert len(a.shards) > 1
    b = write_shards([src], img, ray_out, max_shard_bytes=100_000, engine="ray", ray_address=cluster.address)
    assert tree_bytes(ray_out) == tree_bytes(local) and b.shards == a.shards
    with moto_s3() as server:
        server.use(monkeypatch)
        url = f"s3://{server.bucket}/noflag"
        write_shards([src], img, url, max_shard_bytes=100_000, engine="ray", ray_address=cluster.address)
        got = {n: storage.read_bytes(storage.join(url, n)) for n in storage.listdir(url)}
    assert got == tree_bytes(local)


def dies_once(marker_dir: str, when: str, run_job, job):
    """Run a shard job, but SIGKILL this worker the first time job 1 (before) / job 2 (after writing) runs."""
    marker = Path(marker_dir) / f"{job.number}"
    if job.number == 1 and when == "before" and not marker.exists():
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    rec = run_job(job)
    if job.number == 2 and when == "after" and not marker.exists():
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return rec


class KillingEngine:
    """The real RayEngine, with each job wrapped by ``dies_once``."""

    def __init__(self, inner: RayEngine, marker_dir: Path, when: str):
        self.inner, self.marker_dir, self.when = inner, str(marker_dir), when
        self.workers = inner.workers

    def map(self, fn, items, in_flight=None):
        return self.inner.map(functools.partial(dies_once, self.marker_dir, self.when, fn), items, in_flight)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_killed_worker_is_retried_without_loss_or_duplicates(cluster, data, tmp_path, when):

    src, img, local = data
    out = tmp_path / "killed"
    real = RayEngine.connect(cluster.address)
    wait_for_nodes(2)
    import mmdata.engine as engine_mod

    orig = engine_mod.open_engine

    import contextlib

    @contextlib.contextmanager
    def killing(name, workers=None, ray_address=None):
        yield KillingEngine(real, tmp_path, when)

    engine_mod.open_engine = killing
    try:
        write_shards([src], img, out, samples_per_shard=7, engine="ray", ray_address=cluster.address)
    finally:
        engine_mod.open_engine = orig
        real.close()
    assert (tmp_path / ("1" if when == "before" else "2")).exists()  # the kill happened
    assert tree_bytes(out) == tree_bytes(local)


def test_ray_workers_write_to_s3_with_the_driver_credentials(cluster, data, monkeypatch):
    from s3_server import moto_s3

    src, img, local = data
    with moto_s3() as server:
        server.use(monkeypatch)
        url = f"s3://{server.bucket}/ray"
        write_shards([src], img, url, samples_per_shard=7, engine="ray", ray_address=cluster.address)
        got = {n: storage.read_bytes(storage.join(url, n)) for n in storage.listdir(url)}
    assert got == tree_bytes(local)


def test_cli_no_cluster_at_address(data, tmp_path):
    from s3_server import free_port

    src, img, _ = data
    addr = f"127.0.0.1:{free_port()}"
    p = subprocess.run([*MMDATA, "shard", str(src), "--images", str(img), "--out", str(tmp_path / "o"),
                        "--engine", "ray", "--ray-address", addr, "-q"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().startswith(f"error: --ray-address {addr}: no Ray cluster there")
    assert len(p.stderr.strip().splitlines()) == 1
