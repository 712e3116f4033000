"""mmtrain under a real `torchrun` (not mp.spawn): 2 and 4 CPU processes with gloo, DDP and FSDP2, give
the losses of 1 process on the same global batch; an FSDP2 run's sharded (DCP) checkpoint, written by
2 ranks with no rank holding the full model, resumes on 4 ranks and on 1 with the uninterrupted losses.
Tensor parallelism (DTensor): TP=2 and TP=2 x FSDP2 data-parallel 2 give the TP=1 losses; a TP=2
checkpoint resumes in one process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmtrain import checkpoint as ckpt
from mmtrain.run import TrainArgs, synthetic_data, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

WORKER = Path(__file__).with_name("mmtrain_torchrun_worker.py")
BASE = dict(shards=["synthetic"], model="tiny", seq_len=128, global_batch_size=4, lr=2e-3, log_interval=1,
            device="cpu", num_workers=0, seed=0)


def _run(**kw) -> dict[int, float]:
    return train(TrainArgs(**{**BASE, **kw}), synthetic_data, out=io.StringIO()).losses


def torchrun(nproc: int, runs: list[dict], tmp_path: Path) -> list[dict[int, float]]:
    """Launch the worker with `python -m torch.distributed.run` and return rank 0's losses per run."""
    out = tmp_path / f"losses{nproc}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(WORKER), json.dumps([{**BASE, **kw} for kw in runs]), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world"] == nproc and got["backend"] == "gloo"
    assert got["ranks_agree"]  # every rank reports the global loss
    return [{int(k): v for k, v in run.items()} for run in got["losses"]]


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """One torchrun of 2 processes and one of 4; the 2-rank FSDP2 run leaves a DCP checkpoint at
    iteration 2 that the 4-rank launch resumes."""
    tmp = tmp_path_factory.mktemp("torchrun")
    save = tmp / "dcp_from_2_ranks"
    with_save = dict(fsdp=True, max_steps=4, save=str(save), exit_interval=2)
    tp_save = tmp / "dcp_from_tp2"
    two = torchrun(2, [dict(max_steps=3), dict(max_steps=3, fsdp=True), with_save,
                       dict(max_steps=4, tensor_model_parallel_size=2, save=str(tp_save), exit_interval=2)], tmp)
    four = torchrun(4, [dict(max_steps=3), dict(max_steps=3, fsdp=True),
                        dict(fsdp=True, max_steps=4, load=str(save)),
                        dict(max_steps=3, tensor_model_parallel_size=2, fsdp=True)], tmp)
    return {"two": two, "four": four, "save": save, "tp_save": tp_save}


def test_ddp_and_fsdp2_on_2_and_4_processes_equal_one_process(launches):
    one = _run(max_steps=3)
    for name in ("two", "four"):
        ddp, fsdp2 = launches[name][:2]
        for it in (1, 2, 3):
            assert ddp[it] == pytest.approx(one[it], abs=2e-5), (name, "ddp", it)
            assert fsdp2[it] == pytest.approx(one[it], abs=2e-5), (name, "fsdp2", it)


def test_sharded_checkpoint_is_written_by_every_rank_and_complete(launches):
    save: Path = launches["save"]
    assert (save / ckpt.TRACKER).read_text() == "2\n"
    assert sorted(p.name for p in save.iterdir()) == ["iter_0000002", ckpt.TRACKER]  # no .tmp left
    d = save / "iter_0000002"
    shards = sorted((d / "dcp").glob("*.distcp"))
    assert [p.name for p in shards] == ["__0_0.distcp", "__1_0.distcp"]
    assert (d / "dcp" / ".metadata").is_file() and not (d / "model.pt").exists()
    total = sum(p.stat().st_size for p in shards)
    assert all(p.stat().st_size < 0.7 * total for p in shards)  # each rank wrote its half, not the model
    assert json.loads((d / "state.json").read_text())["ckpt_format"] == "torch_dcp"


def test_resume_onto_4_ranks_and_onto_1_gives_the_uninterrupted_losses(launches):
    full = _run(max_steps=4)
    on4 = launches["four"][2]
    assert sorted(on4) == [3, 4]
    on1 = _run(max_steps=4, fsdp=True, load=str(launches["save"]))
    assert sorted(on1) == [3, 4]
    for it in (3, 4):
        assert on4[it] == pytest.approx(full[it], abs=2e-5)
        assert on1[it] == pytest.approx(full[it], abs=2e-5)


def test_full_model_state_dict_straight_from_the_sharded_checkpoint(launches, tmp_path):
    """What `mmtrain export` reads: the 2-rank DCP checkpoint gives the weights a 1-process run saved
    in the full format at the same iteration."""
    it, sharded = ckpt.load_model_state_dict(launches["save"])
    _run(max_steps=4, save=str(tmp_path / "full"), exit_interval=2)
    it_full, full = ckpt.load_model_state_dict(tmp_path / "full")
    assert it == it_full == 2
    assert set(sharded) == set(full)
    for k, t in full.items():
        assert sharded[k].shape == t.shape and sharded[k].device.type == "cpu"
        torch.testing.assert_close(sharded[k], t, atol=1e-5, rtol=0, msg=k)


def test_tensor_parallel_2_alone_and_with_fsdp2_gives_the_losses_of_one_process(launches):
    one = _run(max_steps=3)
    tp2 = launches["two"][3]  # 4 iterations, lr schedule over 4: compare its first against a 4-step run
    tp2_fsdp2 = launches["four"][3]
    full4 = _run(max_steps=4)
    for it in (1, 2):
        assert tp2[it] == pytest.approx(full4[it], abs=2e-5), it
    for it in (1, 2, 3):
        assert tp2_fsdp2[it] == pytest.approx(one[it], abs=2e-5), it
    on1 = _run(max_steps=4, load=str(launches["tp_save"]))  # the TP=2 DCP checkpoint in one process
    for it in (3, 4):
        assert on1[it] == pytest.approx(full4[it], abs=2e-5), it


def test_tensor_parallel_flags_are_checked():
    from mmdata.errors import InputError
    from mmtrain.args import validate

    with pytest.raises(InputError, match="must divide the number of ranks"):
        validate(TrainArgs(**{**BASE, "tensor_model_parallel_size": 3}), 4)
    with pytest.raises(InputError, match="needs --fsdp"):
        validate(TrainArgs(**{**BASE, "tensor_model_parallel_size": 2}), 4)
