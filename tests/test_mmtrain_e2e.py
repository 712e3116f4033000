"""`mmtrain run` end to end on real shards (fixtures -> shard writer -> PackedLoader -> model):
the loss falls, resume reproduces the uninterrupted run, and user errors are one line + exit 2."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmtrain.run import TrainArgs, train

generate = pytest.importorskip("fixtures.generate")
writer = pytest.importorskip("mmdata.shard.writer")
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mt")
    p = generate.generate_llava_scale(root / "src", n_records=120, n_images=12, image_size=(96, 64), seed=3)
    out = root / "shards"
    writer.write_shards(p["llava_json"], p["images"], out, samples_per_shard=32, workers=1)
    return out


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "mmtrain.cli", "run", *argv], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


@pytest.mark.slow  # a real 12-iteration CLI run
def test_cli_tiny_run_on_real_shards_loss_falls(shards, tmp_path):
    m = tmp_path / "m.jsonl"
    r = _cli("--shards", str(shards), "--seq-len", "512", "--global-batch-size", "2", "--max-steps", "12",
             "--lr", "3e-3", "--lr-warmup-iters", "2", "--log-interval", "1", "--device", "cpu", "--num-workers", "0",
             "--metrics", str(m))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(" iteration")]
    assert len(lines) == 12 and "consumed samples:           24 |" in lines[-1]
    recs = [json.loads(x) for x in m.read_text().splitlines()]
    losses = [x["lm_loss"] for x in recs]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    assert all(0.5 < x["packing_efficiency"] <= 1.0 for x in recs)


def test_resume_on_the_real_loader_sees_the_same_data(shards, tmp_path):
    def args(**kw):
        return TrainArgs(shards=[str(shards)], seq_len=512, global_batch_size=2, max_steps=4, lr=3e-3,
                         log_interval=1, device="cpu", num_workers=0, **kw)

    full = train(args(), out=io.StringIO())
    save = str(tmp_path / "ck")
    train(args(save=save, save_interval=2, exit_interval=2), out=io.StringIO())
    assert torch.load(Path(save) / "iter_0000002" / "loader_rank000.pt")["consumed_rows"] == 4
    rest = train(args(save=save, load=save), out=io.StringIO())
    assert sorted(rest.losses) == [3, 4]
    for it in (3, 4):
        assert rest.losses[it] == pytest.approx(full.losses[it], abs=1e-6)


def test_missing_shards_folder_is_one_line_and_exit_2(tmp_path):
    r = _cli("--shards", str(tmp_path / "nope"), "--device", "cpu")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: shards folder not found"]


def test_bad_batch_sizes_are_one_line_and_exit_2(shards):
    r = _cli("--shards", str(shards), "--global-batch-size", "3", "--micro-batch-size", "2", "--device", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("error: --global-batch-size 3 is not divisible by --micro-batch-size 2 x "
                                "data-parallel size 1")


@pytest.mark.parametrize("impl", ["sdpa_doc", "sdpa_mask"])
def test_real_packed_row_gives_each_conversation_its_own_losses(shards, tmp_path, impl):
    from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
    from mmtrain.accel import Accel
    from mmtrain.batch import split_documents
    from mmtrain.model import build_model

    tok = load_tokenizer(None)
    ld = PackedLoader(shards, tokenizer=tok, config=LoaderConfig(seq_len=1024, cache_dir=str(tmp_path)), num_workers=0)
    row = next(iter(ld))
    ld.close()
    docs = split_documents(row, tok.image_pad_id)
    assert len(docs) >= 2 and any(d["image_grid_thw"].numel() for d in docs)
    torch.manual_seed(0)
    model = build_model("tiny", tok.vocab_size, tok.image_pad_id,
                        accel=Accel("cpu", torch.device("cpu"), "gloo", impl)).eval()
    cu = row["cu_seqlens"].tolist()
    with torch.no_grad():
        packed = model.token_losses(row)
        for i, d in enumerate(docs):
            torch.testing.assert_close(packed[cu[i]:cu[i + 1]], model.token_losses(d), rtol=1e-5, atol=1e-5)
