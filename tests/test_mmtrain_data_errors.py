"""`mmtrain run` on awkward data: nothing fits --seq-len, an empty shard set, samples dropped by the plan,
a finished run loaded again, a --load folder without checkpoints; and uint8 pixels normalised on the
device give the model the same numbers as the loader's float32 rows."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loader_helpers import make_records, write_shards

from mmdata.errors import InputError, MMDataError
from mmtrain.batch import to_device
from mmtrain.run import TrainArgs, train

ROOT = Path(__file__).resolve().parents[1]
# sample lengths with the shipped tokenizer (qwen2vl template):
# 51 56 59 61 62 63 69 | 75 76 77 84 85 90 93 93 97 101 102 108 111
LENGTHS = [51, 56, 59, 61, 62, 63, 69, 75, 76, 77, 84, 85, 90, 93, 93, 97, 101, 102, 108, 111]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("dd") / "shards", make_records(20, seed=2))


def _args(shards: Path, **kw) -> TrainArgs:
    base = dict(shards=[str(shards)], seq_len=128, global_batch_size=1, max_steps=1, lr=1e-3, log_interval=1,
                device="cpu", num_workers=0)
    base.update(kw)
    return TrainArgs(**base)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "mmtrain.cli", "run", "--device", "cpu", "--num-workers", "0",
                           "--global-batch-size", "1", "--max-steps", "1", *argv], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_the_fixture_lengths_are_as_documented(shards):
    from mmdata.loader import LoaderConfig, PackedLoader

    ld = PackedLoader(shards, config=LoaderConfig(seq_len=4096, cache_dir=str(shards.parent / "c")), num_workers=0)
    assert sorted(ld.sets[0].lengths.tolist()) == LENGTHS


def test_loader_says_why_nothing_fits(shards, tmp_path):
    from mmdata.loader import LoaderConfig, PackedLoader

    with pytest.raises(MMDataError) as e:
        PackedLoader(shards, config=LoaderConfig(seq_len=8, cache_dir=str(tmp_path)), num_workers=0)
    assert str(e.value) == f"{shards}: no sample fits seq_len 8 (shortest sample: 51 tokens; 20 samples); raise seq_len"
    assert isinstance(e.value, ValueError)  # callers catching the old ValueError still do


def test_nothing_fits_seq_len_is_one_line_exit_2(shards):
    r = _cli("--shards", str(shards), "--seq-len", "8")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: no sample of {shards} fits --seq-len 8 (shortest sample: "
                                             "51 tokens, 20 samples); raise --seq-len"]


def test_empty_shard_set_and_a_tar_for_a_folder_are_one_line_errors(tmp_path, shards):
    empty = write_shards(tmp_path / "empty", [])
    with pytest.raises(InputError, match=r"empty: no samples \(index.parquet lists 0\): nothing to train on"):
        train(_args(empty), out=io.StringIO())
    tar = next(shards.glob("*.tar"))
    r = _cli("--shards", str(tar))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {tar}: --shards takes the shard folder (holding index.parquet), not a file in it"]


def test_dropped_samples_are_announced_loudly_when_most_are_lost(shards, tmp_path):
    out = io.StringIO()
    m = tmp_path / "m.jsonl"
    train(_args(shards, seq_len=70, metrics=str(m)), out=out)
    text = out.getvalue()
    assert ("data: 7 of 20 samples used per epoch at --seq-len 70 (--overlong drop): 13 dropped as longer than "
            "--seq-len, 0 truncated, 0 unreadable") in text
    assert "WARNING: 65% of the samples are longer than --seq-len 70 and are never trained on" in text
    rec = json.loads(m.read_text().splitlines()[0])
    assert (rec["plan_samples"], rec["plan_used"], rec["plan_dropped_overlong"], rec["plan_truncated"],
            rec["plan_overlong"]) == (20, 7, 13, 0, "drop")


def test_truncate_keeps_every_sample_and_says_so(shards):
    out = io.StringIO()
    train(_args(shards, seq_len=70, overlong="truncate"), out=out)
    text = out.getvalue()
    assert ("data: 20 of 20 samples used per epoch at --seq-len 70 (--overlong truncate): 0 dropped as longer "
            "than --seq-len, 13 truncated, 0 unreadable") in text
    assert "WARNING" not in text


def test_no_warning_when_everything_fits(shards):
    out = io.StringIO()
    train(_args(shards, seq_len=128), out=out)
    assert "data: 20 of 20 samples used per epoch at --seq-len 128" in out.getvalue()
    assert "WARNING" not in out.getvalue()


def test_overlong_option_is_checked(shards):
    r = _cli("--shards", str(shards), "--overlong", "cut")
    assert r.returncode == 2 and r.stderr.strip() == "error: --overlong must be drop or truncate, got 'cut'"


def test_load_of_a_finished_run_says_nothing_to_do(shards, tmp_path):
    ck = tmp_path / "ck"
    train(_args(shards, max_steps=2, save=str(ck)), out=io.StringIO())
    out = io.StringIO()
    res = train(_args(shards, max_steps=2, save=str(ck), load=str(ck)), out=out)
    assert res.iteration == 2 and res.losses == {}
    assert "nothing to do: checkpoint is at iteration 2 = --max-steps 2" in out.getvalue()
    out = io.StringIO()
    train(_args(shards, max_steps=1, load=str(ck)), out=out)
    assert "nothing to do: checkpoint is at iteration 2 > --max-steps 1" in out.getvalue()


def test_load_without_checkpoints_says_so(shards, tmp_path):
    out = io.StringIO()
    train(_args(shards, load=str(tmp_path / "none")), out=out)
    assert f"--load {tmp_path / 'none'}: the folder does not exist, so there is no checkpoint: starting from " \
           "scratch" in out.getvalue()
    (tmp_path / "empty").mkdir()
    out = io.StringIO()
    train(_args(shards, load=str(tmp_path / "empty")), out=out)
    assert f"--load {tmp_path / 'empty'}: no checkpoint in this folder (no latest_checkpointed_iteration.txt, no " \
           "iter_* folders): starting from scratch" in out.getvalue()
    (tmp_path / "lost" / "iter_0000004").mkdir(parents=True)
    r = _cli("--shards", str(shards), "--load", str(tmp_path / "lost"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {tmp_path / 'lost' / 'latest_checkpointed_iteration.txt'}: missing, but "
                               "the folder holds iter_0000004")


def test_uint8_pixels_normalised_on_the_device_match_float32_rows(shards, tmp_path):
    from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
    from mmtrain.model import build_model
    from mmtrain.run import loader_data

    tok = load_tokenizer(None)
    rows = {}
    for dt in ("float32", "uint8"):
        ld = PackedLoader(shards, tokenizer=tok, config=LoaderConfig(seq_len=256, pixel_dtype=dt,
                                                                     cache_dir=str(tmp_path)), num_workers=0)
        rows[dt] = next(iter(ld))
        ld.close()
    assert rows["uint8"]["pixel_values"].dtype == torch.uint8 and rows["float32"]["pixel_values"].numel()
    torch.manual_seed(0)
    model = build_model("tiny", tok.vocab_size, tok.image_pad_id).eval()
    assert torch.equal(model.visual.normalize(rows["uint8"]["pixel_values"]), rows["float32"]["pixel_values"])
    with torch.no_grad():
        a, b = model.token_losses(rows["float32"]), model.token_losses(rows["uint8"])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    data = loader_data(_args(shards, seq_len=256), 0, 1)  # what mmtrain streams: decoded images, uint8
    row = next(iter(data.loader))
    data.loader.close()
    assert "pixel_values" not in row and row["images"].dtype == torch.uint8
    # patched where the model runs (to_device), they are the uint8 rows bit for bit
    assert torch.equal(to_device(row, torch.device("cpu"))["pixel_values"], rows["uint8"]["pixel_values"])


def test_a_tokenizer_path_that_is_not_a_tokenizer_is_an_input_error(shards, tmp_path):
    bad = tmp_path / "tok.json"
    bad.write_text('{"x": 1')
    with pytest.raises(InputError, match=r"tok.json: not a Hugging Face tokenizer.json"):
        train(_args(shards, tokenizer=str(bad)), out=io.StringIO())
    (tmp_path / "tokdir").mkdir()
    with pytest.raises(InputError, match=r"tokdir: no tokenizer.json in this directory"):
        train(_args(shards, tokenizer=str(tmp_path / "tokdir")), out=io.StringIO())
