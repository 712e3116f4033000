"""GPU check of a Qwen2-VL-2B-shaped model (random weights, real vocab 151,936) through the whole HF path:
a Hugging Face folder is written, `mmtrain run --model DIR` trains it on packed 4096-token rows in bf16 with
varlen attention, and per-document losses of a packed row are compared with each document run alone.

    .venv/bin/python benchmarks/bench_gpu_qwen2vl.py                     # defaults below, ~5 min on an H100
    .venv/bin/python benchmarks/bench_gpu_qwen2vl.py --steps 30 --gbs 8 --workdir /tmp/bench_gpu

Data: `fixtures.generate_llava_scale` (LLaVA-Instruct-like, 448x336 photos -> 192 image tokens each) sharded by
`mmdata shard` at --max-res 448, read by the PackedLoader (uint8 pixels, --num-workers workers). Tokens are
mmdata's shipped tokenizer (ids < 4096; the embedding and LM head still have 151,936 rows, so the FLOPs and
memory are the real model's). Figures (first --warmup iterations left out): real tokens/s, MFU (model FLOPs /
(time x the card's dense bf16 peak), as `mmtrain run` logs it), data-wait share of step time, peak allocated
memory, and the largest per-document |loss(packed) - loss(alone)| over one row (bf16 autocast and fp32).
Prints one table. Needs CUDA; nothing here runs on CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from benchmarks.bench_train import make_shards

# Qwen2-VL-2B-Instruct's config.json (the Hub's flat form), token ids replaced by the shipped tokenizer's.
QWEN2VL_2B = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "torch_dtype": "bfloat16",
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "vocab_size": 151936,
    "max_position_embeddings": 32768, "tie_word_embeddings": True, "use_sliding_window": False, "hidden_act": "silu",
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
}


SMOKE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
         "vision_config": QWEN2VL_2B["vision_config"] | {"depth": 2, "embed_dim": 64, "num_heads": 4, "hidden_size": 64}}


def make_model_dir(workdir: Path, device: str = "cuda", smoke: bool = False) -> Path:
    """A Qwen2-VL-2B-shaped HF folder with random bf16 weights and mmdata's shipped tokenizer."""
    from mmdata.loader import load_tokenizer
    from mmtrain import hf
    from mmtrain.accel import get_accel
    from mmtrain.model import VLModel

    out = workdir / ("smoke-random" if smoke else "qwen2vl-2b-random")
    if (out / "model.safetensors").is_file() or (out / hf.INDEX).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer()
    cfg = QWEN2VL_2B | {"image_token_id": tok.image_pad_id, "video_token_id": tok.video_pad_id,
                        "vision_start_token_id": tok.vision_start_id, "vision_end_token_id": tok.vision_end_id,
                        "bos_token_id": tok.endoftext_id, "eos_token_id": tok.im_end_id} | (SMOKE if smoke else {})
    mc = hf.model_config_from_hf(cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = VLModel(mc, get_accel(device))
    hf.write_safetensors(out, {k: v.to("cpu", torch.bfloat16) for k, v in hf.to_hf(model.state_dict(), mc).items()})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(hf.preset_processor_config(), indent=2))
    hf.write_tokenizer_files(out)
    return out


def throughput(model_dir: Path, shards: Path, a: argparse.Namespace) -> dict:
    """The recipe itself (`mmtrain.run.train`) on the HF folder; figures from its per-iteration records."""
    from mmtrain.run import TrainArgs, train

    metrics = Path(a.workdir) / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    args = TrainArgs(shards=[str(shards)], model=str(model_dir), seq_len=a.seq_len, global_batch_size=a.gbs,
                     micro_batch_size=1, max_steps=a.steps, lr=1e-5, log_interval=1, device=a.device, bf16=True,
                     use_flash_attn=True, num_workers=a.num_workers, metrics=str(metrics),
                     recompute_granularity="full" if a.recompute else None,
                     recompute_method="block" if a.recompute else None, recompute_num_layers=a.recompute)
    res = train(args)
    recs = [json.loads(x) for x in metrics.read_text().splitlines()][a.warmup:]
    t = sum(r["elapsed_ms_per_iteration"] for r in recs) / 1000
    return {"tokens_per_s": sum(r["tokens_per_second"] * r["elapsed_ms_per_iteration"] / 1000 for r in recs) / t,
            "mfu": sum(r["mfu"] * r["elapsed_ms_per_iteration"] for r in recs) / (1000 * t),
            "data_wait": sum(r["data_wait_share"] * r["elapsed_ms_per_iteration"] for r in recs) / (1000 * t),
            "step_s": t / len(recs), "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else float("nan"),
            "loss_last": res.losses[max(res.losses)]}


def parity(model_dir: Path, shards: Path, seq_len: int, device: str = "cuda") -> dict:
    """max |per-document loss packed - alone| on one packed row, bf16 autocast and fp32."""
    from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
    from mmtrain.accel import get_accel
    from mmtrain.batch import split_documents, to_device
    from mmtrain.hf import load_hf_model

    tok = load_tokenizer(model_dir)
    row = next(iter(PackedLoader(str(shards), tokenizer=tok, config=LoaderConfig(seq_len=seq_len, pixel_dtype="uint8"),
                                 num_workers=0)))
    accel = get_accel(device, use_flash_attn=True)
    model = load_hf_model(model_dir, accel).eval()
    out = {"docs": len(row["cu_seqlens"]) - 1, "attn": accel.attn_impl}
    for name, bf16 in (("bf16", True), ("fp32", False)):
        with torch.no_grad(), accel.autocast(bf16):
            packed = model.token_losses(to_device(row, accel.device)).float().cpu()
            worst, cu = 0.0, row["cu_seqlens"].tolist()
            for (s, e), doc in zip(zip(cu[:-1], cu[1:]), split_documents(row, tok.image_pad_id)):
                alone = model.token_losses(to_device(doc, accel.device)).float().cpu()
                mask = doc["labels"][0] != -100
                mask[0] = False
                if mask.any():
                    worst = max(worst, abs(float(packed[s:e][mask].mean() - alone[mask].mean())))
        out[f"loss_diff_{name}"] = worst
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/bench_gpu_qwen2vl")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--gbs", type=int, default=4, help="packed rows per iteration (micro-batch 1, accumulated)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--records", type=int, default=4000)
    p.add_argument("--recompute", type=int, default=0, help="recompute the first N layers / blocks (0 = off)")
    p.add_argument("--smoke", action="store_true", help="a 2-layer model on the CPU: checks the script, measures nothing")
    a = p.parse_args()
    a.device = "cpu" if a.smoke else "cuda"
    if not a.smoke and not torch.cuda.is_available():
        sys.exit("bench_gpu_qwen2vl: needs a CUDA device (--smoke checks the script on the CPU)")
    wd = Path(a.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir, shards = make_model_dir(wd, a.device, a.smoke), make_shards(wd, a.records, samples_per_shard=256, workers=4)
    print(f"setup (model folder + shards): {time.perf_counter() - t0:.0f} s", flush=True)
    par = parity(model_dir, shards, a.seq_len, a.device)
    if a.device == "cuda":
        torch.cuda.empty_cache()
    thr = throughput(model_dir, shards, a)
    dev = torch.cuda.get_device_name() if a.device == "cuda" else "cpu (smoke run: figures mean nothing)"
    rows = [("device", dev), ("model", "Qwen2-VL-2B shape, random bf16 weights, vocab 151,936"),
            ("seq-len x global batch", f"{a.seq_len} x {a.gbs} (packed, micro-batch 1)"),
            ("attention", par["attn"]), ("tokens/s (real)", f"{thr['tokens_per_s']:,.0f}"),
            ("step time", f"{thr['step_s']:.3f} s"), ("MFU", f"{100 * thr['mfu']:.1f}%"),
            ("data-wait share", f"{100 * thr['data_wait']:.2f}%"), ("peak allocated", f"{thr['peak_gib']:.1f} GiB"),
            ("packed vs alone, max |doc loss diff| bf16", f"{par['loss_diff_bf16']:.2e} ({par['docs']} docs)"),
            ("packed vs alone, max |doc loss diff| fp32", f"{par['loss_diff_fp32']:.2e}")]
    w = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"| {k:<{w}} | {v} |" for k, v in rows))


if __name__ == "__main__":
    main()
