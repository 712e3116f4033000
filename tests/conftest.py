"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_mmdata_cache(tmp_path_factory):
    """The loader's derived caches (lengths, plans) go to $MMDATA_CACHE: one per test session, so tests
    never write into the user's ~/.cache/mmdata (commands the tests start inherit it)."""
    old = os.environ.get("MMDATA_CACHE")
    os.environ["MMDATA_CACHE"] = str(tmp_path_factory.mktemp("mmdata-cache"))
    yield
    if old is None:
        os.environ.pop("MMDATA_CACHE", None)
    else:
        os.environ["MMDATA_CACHE"] = old


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread: 2-core CI boxes run loader workers beside the model, and
    OpenMP threads spinning on a busy core make a tiny model 10x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real 2-node Ray cluster on this machine (1 CPU, a small object store each), shared by the Ray
    tests and shut down at the end of the session."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 << 20,
                                                      "include_dashboard": False})
    c.add_node(num_cpus=1, object_store_memory=80 << 20)
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def s3_server():
    """A real local S3 endpoint (moto's server on 127.0.0.1), one per test module."""
    from s3_server import moto_s3

    with moto_s3() as s:
        yield s
