"""The training recipe on synthetic packed rows: the loss falls, the loss is normalised over the
global batch (micro-batching and the data-parallel split do not change it), resume reproduces the
uninterrupted run, checkpoints are atomic, and the log line is Megatron's."""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket

import pytest
import torch

from mmdata.errors import InputError
from mmtrain import checkpoint as ckpt
from mmtrain.run import TrainArgs, format_log_line, lr_at, synthetic_data, train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(**kw) -> TrainArgs:
    base = dict(shards=["synthetic"], model="tiny", seq_len=128, global_batch_size=4, max_steps=4, lr=2e-3,
                log_interval=1, device="cpu", seed=0)
    base.update(kw)
    return TrainArgs(**base)


def _run(**kw):
    out = io.StringIO()
    res = train(_args(**kw), synthetic_data, out=out)
    return res, out.getvalue()


LINE = re.compile(
    r"^ iteration +(\d+)/ +(\d+) \| consumed samples: +(\d+) \| elapsed time per iteration \(ms\): [\d.]+ \| "
    r"learning rate: \d\.\d{6}E[+-]\d\d \| global batch size: +(\d+) \| lm loss: (\d\.\d{6}E[+-]\d\d) \| "
    r"loss scale: 1\.0 \| grad norm: [\d.]+ \| number of skipped iterations: +0 \| number of nan iterations: +0 \| "
    r"tokens per second: [\d.]+ \| packing efficiency: [\d.]+% \| MFU: [\d.]+%$")


def test_tiny_run_loss_falls_and_logs_megatron_lines():
    res, text = _run(max_steps=12, log_interval=3, lr_warmup_iters=2, min_lr=1e-4)
    lines = [ln for ln in text.splitlines() if ln.startswith(" iteration")]
    assert len(lines) == 4
    for i, ln in enumerate(lines, 1):
        m = LINE.match(ln)
        assert m, ln
        assert (int(m[1]), int(m[2]), int(m[3]), int(m[4])) == (3 * i, 12, 3 * i * 4, 4)
    assert res.consumed_samples == 48 and res.iteration == 12
    first = sum(res.losses[i] for i in (1, 2, 3)) / 3
    last = sum(res.losses[i] for i in (10, 11, 12)) / 3
    assert last < first - 0.5, res.losses


def test_log_line_matches_megatron_form():
    line = format_log_line(iteration=10, max_steps=100, consumed=80, elapsed_ms=450.24, lr=1e-4, gbs=8,
                           loss=5.1234564, grad_norm=1.2341, skipped=0, nan=0, tokens_per_s=1234.54,
                           packing=0.991, mfu=0.001)
    assert line == (" iteration       10/     100 | consumed samples:           80 | elapsed time per iteration (ms):"
                    " 450.2 | learning rate: 1.000000E-04 | global batch size:     8 | lm loss: 5.123456E+00 |"
                    " loss scale: 1.0 | grad norm: 1.234 | number of skipped iterations:   0 |"
                    " number of nan iterations:   0 | tokens per second: 1234.5 | packing efficiency: 99.1% | MFU: 0.1%")


def test_loss_is_averaged_over_the_global_batch_not_per_micro_batch():
    # Same 4 rows: 4 micro-batches of 1, 2 of 2 (rows concatenated into one THD row), 1 of 4.
    a, _ = _run(max_steps=2, micro_batch_size=1)
    b, _ = _run(max_steps=2, micro_batch_size=2)
    c, _ = _run(max_steps=2, micro_batch_size=4)
    for it in (1, 2):
        assert a.losses[it] == pytest.approx(b.losses[it], abs=1e-6)
        assert a.losses[it] == pytest.approx(c.losses[it], abs=1e-6)
    # and it is the token-weighted mean, not the mean of per-row means
    from mmtrain.model import build_model
    from mmtrain.run import seed_everything
    from mmtrain.synthetic import SynthVocab, make_row

    seed_everything(0)
    v = SynthVocab()
    m = build_model("tiny", v.size, v.image_pad)
    with torch.no_grad():
        parts = [m(make_row(i, 128)) for i in range(4)]
    tok_mean = sum(float(s) for s, _ in parts) / sum(int(n) for _, n in parts)
    row_mean = sum(float(s) / int(n) for s, n in parts) / 4
    assert a.losses[1] == pytest.approx(tok_mean, abs=1e-6)
    assert abs(tok_mean - row_mean) > 1e-5


def test_resume_continues_with_the_same_losses(tmp_path):
    full, _ = _run(max_steps=6)
    save = str(tmp_path / "ck")
    first, _ = _run(max_steps=6, save=save, save_interval=3, exit_interval=3)
    assert first.iteration == 3
    assert (tmp_path / "ck" / ckpt.TRACKER).read_text() == "3\n"
    second, text = _run(max_steps=6, save=save, save_interval=3, load=save)
    assert "loaded checkpoint" in text
    iters = [int(LINE.match(ln)[1]) for ln in text.splitlines() if ln.startswith(" iteration")]
    consumed = [int(LINE.match(ln)[3]) for ln in text.splitlines() if ln.startswith(" iteration")]
    assert iters == [4, 5, 6] and consumed == [16, 20, 24]
    for it in (1, 2, 3):
        assert first.losses[it] == full.losses[it]
    for it in (4, 5, 6):
        assert second.losses[it] == pytest.approx(full.losses[it], abs=1e-6)
    assert (tmp_path / "ck" / ckpt.TRACKER).read_text() == "6\n"


def test_checkpoint_layout_and_atomicity(tmp_path):
    save = tmp_path / "ck"
    _run(max_steps=2, save=str(save), save_interval=1)
    d = save / "iter_0000002"
    assert sorted(p.name for p in d.iterdir()) == ["loader_rank000.pt", "model.pt", "optim.pt", "rng_rank000.pt",
                                                    "state.json"]
    st = json.loads((d / "state.json").read_text())
    assert (st["iteration"], st["consumed_samples"]) == (2, 8)
    assert torch.load(d / "loader_rank000.pt") == {"consumed_rows": 8, "global_rows": 8, "seed": 0}
    assert sorted(p.name for p in save.iterdir()) == ["iter_0000001", "iter_0000002", ckpt.TRACKER]
    # A crash while writing iteration 3 leaves a temp folder that is never loaded.
    (save / ".iter_0000003.tmp").mkdir()
    assert ckpt.load_checkpoint(save, 0).iteration == 2
    (save / ckpt.TRACKER).write_text("7\n")
    with pytest.raises(InputError, match="missing"):
        ckpt.load_checkpoint(save, 0)
    assert ckpt.load_checkpoint(tmp_path / "empty", 0) is None


def test_metrics_jsonl_and_tensorboard(tmp_path):
    _run(max_steps=2, metrics=str(tmp_path / "m.jsonl"), tensorboard_dir=str(tmp_path / "tb"))
    recs = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == [1, 2]
    assert {"lm_loss", "learning_rate", "tokens_per_second", "packing_efficiency", "mfu", "data_wait_share"} <= set(recs[0])
    assert 0 < recs[0]["packing_efficiency"] <= 1 and recs[0]["mfu"] > 0
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_lr_schedule_warmup_then_cosine_to_min_lr():
    a = _args(lr=1e-3, min_lr=1e-5, lr_warmup_iters=4, max_steps=14)
    assert [lr_at(i, a) for i in (1, 2, 4)] == pytest.approx([2.5e-4, 5e-4, 1e-3])
    assert lr_at(9, a) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert lr_at(14, a) == pytest.approx(1e-5)


@pytest.mark.parametrize("kw,msg", [
    (dict(global_batch_size=6, micro_batch_size=4), "not divisible"),
    (dict(save_interval=2), "needs --save"),
    (dict(recompute_granularity="full"), "--recompute-method"),
    (dict(min_lr=1.0), "--min-lr"),
    (dict(model="7b"), "--model"),
])
def test_bad_option_combinations_are_rejected(kw, msg):
    with pytest.raises(InputError, match=msg):
        train(_args(**kw), synthetic_data)


def test_recompute_and_bf16_runs_train():
    plain, _ = _run(max_steps=2)
    rc, _ = _run(max_steps=2, recompute_granularity="full", recompute_method="block", recompute_num_layers=1)
    assert rc.losses[2] == pytest.approx(plain.losses[2], abs=1e-5)
    low, _ = _run(max_steps=2, bf16=True)
    assert all(math.isfinite(v) for v in low.losses.values())
    assert low.losses[1] == pytest.approx(plain.losses[1], rel=0.02)


# ----------------------------------------------------------------------------- two CPU processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, runs: list[dict], out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from datetime import timedelta

    # once, as under torchrun (train() reuses it); a stuck collective fails instead of hanging
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=120))
    losses = [train(_args(**kw), synthetic_data, out=io.StringIO()).losses for kw in runs]
    torch.distributed.destroy_process_group()
    torch.save(losses, f"{out_path}.{rank}")


def _spawn(world: int, runs: list[dict], tmp_path) -> list[dict]:
    import torch.multiprocessing as mp

    out = str(tmp_path / f"losses{world}")
    mp.spawn(_worker, args=(world, _free_port(), runs, out), nprocs=world, join=True)
    losses = [torch.load(f"{out}.{r}") for r in range(world)]
    assert all(lo == losses[0] for lo in losses)  # every rank reports the global loss
    return losses[0]


@pytest.mark.slow  # two spawned interpreters importing torch: ~15-40 s on 2 busy cores
def test_two_gloo_processes_match_one_process(tmp_path):
    # Same global batch of 4 rows: one process takes rows 0-3, two processes take 0,2 and 1,3.
    runs = [dict(max_steps=3, global_batch_size=4), dict(max_steps=3, global_batch_size=4, fsdp=True)]
    one, _ = _run(**runs[0])
    ddp, fsdp2 = _spawn(2, runs, tmp_path)
    for it in (1, 2, 3):
        assert ddp[it] == pytest.approx(one.losses[it], abs=2e-5)
        assert fsdp2[it] == pytest.approx(one.losses[it], abs=2e-5)
