"""--profile with Megatron's flags: iterations N..M-1 on the chosen ranks, a trace TensorBoard opens,
a short table in the log; out-of-range flags are one line and exit 2."""

from __future__ import annotations

import io
import json
import re

import pytest

from mmdata.errors import InputError
from mmtrain.args import validate
from mmtrain.run import TrainArgs, synthetic_data, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(**kw) -> TrainArgs:
    base = dict(shards=["synthetic"], model="tiny", seq_len=128, global_batch_size=2, max_steps=4, lr=2e-3,
                log_interval=1, device="cpu", num_workers=0, profile=True, profile_step_start=2, profile_step_end=4)
    return TrainArgs(**{**base, **kw})


def test_profile_writes_a_tensorboard_trace_and_a_table(tmp_path):
    out = io.StringIO()
    res = train(_args(tensorboard_dir=str(tmp_path / "tb")), synthetic_data, out=out)
    assert sorted(res.losses) == [1, 2, 3, 4]  # profiling does not change the run
    traces = list((tmp_path / "tb" / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1 and traces[0].name.startswith("rank0")
    trace = json.loads(traces[0].read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"data_wait", "optimizer"} <= names
    text = out.getvalue()
    assert f"profile rank 0: iterations 2-3 (2 steps" in text
    m = re.search(r"  matmul ([\d.]+)% \| attention ([\d.]+)% of operator time \| data wait ([\d.]+)% \| "
                  r"optimizer ([\d.]+)% of step time", text)
    assert m, text
    assert float(m[1]) > 5 and float(m[2]) > 0  # a transformer spends real time in matmuls and attention
    rows = [ln for ln in text.splitlines() if re.match(r"  aten::\S+ +[\d.]+ +[\d.]+% +\d+$", ln)]
    assert 3 <= len(rows) <= 8


def test_profile_goes_under_save_without_tensorboard_dir(tmp_path):
    train(_args(save=str(tmp_path / "ck"), profile_step_start=1, profile_step_end=2, max_steps=2), synthetic_data,
          out=io.StringIO())
    assert len(list((tmp_path / "ck" / "profile").glob("*.pt.trace.json"))) == 1


def test_rank_not_in_profile_ranks_records_nothing(tmp_path):
    from mmtrain.profiling import NoProfiler, make_profiler

    args = _args(tensorboard_dir=str(tmp_path), profile_ranks=[1])
    assert type(make_profiler(args, 0, None, print)) is NoProfiler


@pytest.mark.parametrize("kw,msg", [
    (dict(profile_step_start=0), "--profile-step-start must be at least 1"),
    (dict(profile_step_start=3, profile_step_end=3), "--profile-step-end must be greater than --profile-step-start 3"),
    (dict(profile_step_start=9, profile_step_end=12), "--profile-step-start 9 is past --max-steps 4"),
    (dict(profile_ranks=[0, 2]), "--profile-ranks 0 2: ranks run from 0 to 1"),
    (dict(tensorboard_dir=None, save=None), "--profile writes its trace under --tensorboard-dir (or --save)"),
])
def test_out_of_range_profile_flags_are_one_line(kw, msg, tmp_path):
    args = _args(**{"tensorboard_dir": str(tmp_path), **kw})
    with pytest.raises(InputError) as e:
        validate(args, 2)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_cli_takes_megatrons_multi_value_profile_ranks():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mmtrain.cli", "run", "--shards", "x", "--profile",
                        "--profile-ranks", "0", "1", "--tensorboard-dir", "tb", "--max-steps", "20"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "error: --profile-ranks 0 1: ranks run from 0 to 0"
