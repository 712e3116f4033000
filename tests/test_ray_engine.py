"""RayEngine on a real 2-node Ray cluster started on this machine: ordered results, the driver's
AWS_* variables on the workers, a worker SIGKILLed mid-task retried, and one-line connect errors."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from mmdata.engine import open_engine
from mmdata.errors import InputError

ray = pytest.importorskip("ray")

from mmdata.engine.ray_engine import RayEngine, wait_for_nodes  # noqa: E402


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this test file
    return ray_cluster


@pytest.fixture
def engine(cluster, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.example:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "driver-key")
    eng = RayEngine.connect(cluster.address, max_retries=2)
    wait_for_nodes(2)
    yield eng
    eng.close()


def where(i: int) -> tuple[int, str, str | None, str | None]:
    time.sleep(0.3)
    ctx = ray.get_runtime_context()
    return i, ctx.get_node_id(), os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_ACCESS_KEY_ID")


def test_ordered_results_on_both_nodes_with_driver_env(engine):
    assert engine.workers == 2
    out = list(engine.map(where, range(8), in_flight=4))
    assert [o[0] for o in out] == list(range(8))
    assert len({o[1] for o in out}) == 2  # both nodes did work
    assert {(o[2], o[3]) for o in out} == {("http://s3.example:9000", "driver-key")}


def slow_once(arg: tuple[int, str]) -> int:
    """Item 3 blocks on its first attempt (writing its pid for the test to kill); retries return."""
    i, marker = arg
    if i == 3 and not os.path.exists(marker):
        Path(marker + ".tmp").write_text(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
        time.sleep(60)
    return i * 10


def test_killed_worker_is_retried_without_loss_or_duplicates(engine, tmp_path):
    marker = str(tmp_path / "pid")

    def killer() -> None:
        deadline = time.monotonic() + 60
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(int(Path(marker).read_text()), signal.SIGKILL)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    out = list(engine.map(slow_once, [(i, marker) for i in range(6)], in_flight=3))
    t.join(5)
    assert out == [i * 10 for i in range(6)]


def always_dies(i: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return i


def test_a_task_that_always_kills_its_worker_fails_with_a_message(engine):
    with pytest.raises(RuntimeError, match="died 3 times"):
        list(engine.map(always_dies, [0]))


def bad_input(i: int) -> int:
    raise InputError(f"/data/{i}.json", "invalid JSON", line=3, col=7)


def test_input_error_in_a_task_reaches_the_driver_as_is(engine):
    with pytest.raises(InputError) as e:
        list(engine.map(bad_input, [5]))
    assert str(e.value) == "/data/5.json:3:7: invalid JSON"


def test_no_cluster_at_address_is_one_line_within_seconds():
    from s3_server import free_port

    addr = f"127.0.0.1:{free_port()}"
    t = time.monotonic()
    with pytest.raises(InputError) as e, open_engine("ray", ray_address=addr):
        pass
    assert time.monotonic() - t < 30
    msg = str(e.value)
    assert msg.startswith(f"--ray-address {addr}: no Ray cluster there") and "\n" not in msg


def test_unknown_engine():
    with pytest.raises(InputError, match="unknown engine 'spark'"), open_engine("spark"):
        pass


def square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_local_engine_is_ordered(workers):
    with open_engine("local", workers=workers) as eng:
        assert list(eng.map(square, range(20), in_flight=3)) == [x * x for x in range(20)]


def test_executor_for_pool_shaped_code(engine):
    from concurrent.futures import FIRST_COMPLETED, wait

    ex = engine.executor()
    futs = [ex.submit(pow, x, 2) for x in range(6)]
    done, _ = wait(futs, return_when=FIRST_COMPLETED)
    assert done
    assert [f.result() for f in futs] == [x * x for x in range(6)]
    with pytest.raises(InputError, match="invalid JSON"):
        ex.submit(bad_input, 1).result()
