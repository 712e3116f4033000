"""HF folders through `mmtrain run`: --max-steps 0 --save then export gives back the source tensors bit for bit
(bf16, sharded, tied), transformers loads exports of HF and preset checkpoints, --save-hf equals export,
--freeze trains only what is left, and bad folders / tokenizers / shards are one line + exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from hf_tiny import save_tiny  # noqa: E402
from loader_helpers import make_records, write_shards  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from mmdata.errors import InputError  # noqa: E402
from mmtrain.export import export  # noqa: E402
from mmtrain.run import TrainArgs, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hfsh") / "shards"
    write_shards(out, make_records(16, seed=5, max_images=2, sizes=((112, 112), (168, 112), (56, 168)), text_words=(3, 12)))
    return out


def args(shards: Path, model: str, **kw) -> TrainArgs:
    base = dict(shards=[str(shards)], model=model, seq_len=512, global_batch_size=2, max_steps=0, log_interval=1,
                device="cpu", num_workers=0, lr=1e-2)
    return TrainArgs(**(base | kw))


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_export_of_iteration_0_is_the_source_bf16_sharded_tied(shards, tmp_path):
    src = save_tiny(tmp_path / "src", "qwen2_5_vl", tie=True, dtype=torch.bfloat16, max_shard_size="100KB")
    assert (src / "model.safetensors.index.json").is_file()
    train(args(shards, str(src), save=str(tmp_path / "ck")), out=open(os.devnull, "w"))
    out = tmp_path / "out"
    r = _cli("export", str(tmp_path / "ck"), "--hf", str(out))
    assert r.returncode == 0 and "exported iteration 0" in r.stderr and r.stdout == "", r.stderr
    a, b = tensors(src), tensors(out)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]), k
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    from transformers import AutoModelForImageTextToText

    m = AutoModelForImageTextToText.from_pretrained(out)
    assert m.dtype == torch.bfloat16 and m.config.tie_word_embeddings


def test_flat_hub_config_loads_the_same_model(tmp_path):
    """The Hub's flat config.json (text fields on top, rope_scaling) gives the same architecture and weights."""
    from mmtrain.accel import get_accel
    from mmtrain.hf import load_hf_model

    src = save_tiny(tmp_path / "src", "qwen2_vl")
    cfg = json.loads((src / "config.json").read_text())
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = cfg | text | {"rope_theta": rope["rope_theta"], "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
                         "model_type": "qwen2_vl"}
    (src / "config.json").write_text(json.dumps(flat))
    m1 = load_hf_model(src, get_accel("cpu"))
    m0 = load_hf_model(save_tiny(tmp_path / "nested", "qwen2_vl"), get_accel("cpu"))
    assert m1.cfg.text == m0.cfg.text and m1.cfg.vision == m0.cfg.vision
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m0.state_dict().values()))


def test_preset_checkpoint_exports_to_a_folder_transformers_runs_identically(shards, tmp_path):
    from transformers import AutoModelForImageTextToText

    from mmtrain.accel import get_accel
    from mmtrain.hf import load_hf_model

    train(args(shards, "tiny", max_steps=1, save=str(tmp_path / "ck"), save_hf=str(tmp_path / "hf")),
          out=open(os.devnull, "w"))
    it, out = export(tmp_path / "ck", tmp_path / "out")
    assert it == 1
    a, b = tensors(out), tensors(tmp_path / "hf")  # --save-hf at the end == export of the last iteration
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    ours = load_hf_model(out, get_accel("cpu")).eval()
    theirs = AutoModelForImageTextToText.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.tensor([[5, 17, 300, 42, 7, 99]])
    with torch.no_grad():
        ref = theirs(input_ids=ids).logits[0]
        mine = ours.logits({"input_ids": ids, "position_ids": torch.arange(6).expand(3, 1, 6), "cu_seqlens": torch.tensor([0, 6])})
    assert float((mine - ref).abs().max()) < 1e-4


def test_freeze_vision_llm_trains_the_merger_only(shards, tmp_path):
    src = save_tiny(tmp_path / "src", "qwen2_vl")
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        train(args(shards, str(src), max_steps=2, freeze=["vision,llm"], save_hf=str(tmp_path / "hf")), out=f)
    assert "frozen: llm, vision" in log.read_text() and "trainable parameters: 0.02M of" in log.read_text()
    a, b = tensors(src), tensors(tmp_path / "hf")
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith("visual.merger.") for k in changed), sorted(changed)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "mmtrain.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_cli_rejects_a_non_qwen_folder_in_one_line(shards, tmp_path):
    src = save_tiny(tmp_path / "src", "qwen2_vl")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg | {"model_type": "llava"}))
    r = _cli("run", "--shards", str(shards), "--model", str(src), "--device", "cpu", "--max-steps", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert str(src / "config.json") in r.stderr and "model_type 'llava' is not supported" in r.stderr


def _run_error(shards: Path, model: Path, **kw) -> str:
    with pytest.raises(InputError) as e:
        train(args(shards, str(model), **kw), out=open(os.devnull, "w"))
    return str(e.value)


def test_missing_shard_missing_tensor_and_wrong_shape_are_named(shards, tmp_path):
    src = save_tiny(tmp_path / "src", "qwen2_vl", max_shard_size="100KB")
    files = sorted(src.glob("model-*.safetensors"))
    files[-1].rename(tmp_path / "away")
    msg = _run_error(shards, src)
    assert str(files[-1]) in msg and "index.json names it" in msg
    (tmp_path / "away").rename(files[-1])
    idx = json.loads((src / "model.safetensors.index.json").read_text())
    del idx["weight_map"]["model.norm.weight"]
    (src / "model.safetensors.index.json").write_text(json.dumps(idx))
    assert "tensor model.norm.weight is missing" in _run_error(shards, src)

    one = save_tiny(tmp_path / "one", "qwen2_vl")
    cfg = json.loads((one / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 128
    (one / "config.json").write_text(json.dumps(cfg))
    msg = _run_error(shards, one)
    assert str(one / "model.safetensors") in msg and "mlp.down_proj.weight has shape [64, 96], config.json gives [64, 128]" in msg


def test_tokenizer_disagreeing_with_the_config_is_named(shards, tmp_path):
    src = save_tiny(tmp_path / "src", "qwen2_vl")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg | {"vision_start_token_id": 7}))
    msg = _run_error(shards, src)
    assert str(src / "tokenizer.json") in msg and "<|vision_start|> is id" in msg and "vision_start_token_id 7" in msg


def test_shards_for_a_bigger_token_budget_than_the_processor_are_named(shards, tmp_path):
    src = save_tiny(tmp_path / "src", "qwen2_vl")
    pre = json.loads((src / "preprocessor_config.json").read_text())
    pre["size"]["longest_edge"] = 28 * 28 * 256
    (src / "preprocessor_config.json").write_text(json.dumps(pre))
    msg = _run_error(shards, src)
    assert str(shards / "manifest.json") in msg and "reshard with --max-image-tokens 256" in msg
    man = json.loads((shards / "manifest.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    for f in shards.iterdir():
        (other / f.name).symlink_to(f)
    (other / "manifest.json").unlink()
    (other / "manifest.json").write_text(json.dumps(man | {"options": man["options"] | {"rule": "qwen-vl"}}))
    assert "reshard with --rule qwen2vl" in _run_error(other, save_tiny(tmp_path / "ok", "qwen2_vl"))


def test_transformers5_in_memory_names_load_the_same_model(tmp_path):
    """Checkpoints saved with `model.language_model.*` / `model.visual.*` names load like the Hub's."""
    from safetensors.torch import save_file

    from mmtrain.accel import get_accel
    from mmtrain.hf import load_hf_model

    src = save_tiny(tmp_path / "src", "qwen2_5_vl")
    hub = load_file(src / "model.safetensors")
    renamed = {("model.language_model." + k[6:] if k.startswith("model.") else
                "model." + k if k.startswith("visual.") else k): v for k, v in hub.items()}
    assert any(k.startswith("model.language_model.layers.") for k in renamed)
    save_file(renamed, str(src / "model.safetensors"), metadata={"format": "pt"})
    a = load_hf_model(src, get_accel("cpu")).state_dict()
    b = load_hf_model(save_tiny(tmp_path / "ref", "qwen2_5_vl"), get_accel("cpu")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_freeze_values_are_checked():
    from mmtrain.freeze import parse_freeze

    assert parse_freeze(["vision", "merger, vision"]) == ("vision", "merger")
    with pytest.raises(InputError, match="--freeze takes vision, merger, llm .* got 'vit'"):
        parse_freeze(["vision,vit"])
    with pytest.raises(InputError, match="leaves nothing to train"):
        parse_freeze(["vision,merger", "llm"])


def test_sharded_write_reads_back_with_its_index(tmp_path):
    from mmtrain.accel import get_accel
    from mmtrain.hf import load_hf_model, write_safetensors

    src = save_tiny(tmp_path / "src", "qwen2_vl")
    out = tmp_path / "out"
    out.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    write_safetensors(out, load_file(src / "model.safetensors"), max_shard_bytes=60_000)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 2 and (out / "model.safetensors.index.json").is_file()
    a, b = load_hf_model(out, get_accel("cpu")).state_dict(), load_hf_model(src, get_accel("cpu")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
