"""Shared test fixtures."""

from __future__ import annotations

import pytest


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
