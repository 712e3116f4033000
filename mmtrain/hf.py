"""Hugging Face Qwen2-VL / Qwen2.5-VL folders in and out of mmtrain's model.

A folder's `config.json` (the Hub's flat form or transformers 5's nested one) becomes a `ModelConfig`;
its safetensors (one file, or shards with `model.safetensors.index.json`) become mmtrain's state dict by
a fixed name map (plus two reshapes: the Conv3d patch embedding is our flat Linear, and the decoder's
`gate_proj`/`up_proj` are our one `[gate | up]` GEMM). The same map run backwards writes a folder that
`transformers` loads with `from_pretrained`. Every problem found is an `InputError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmdata.format.names import MANIFEST
from mmdata.errors import InputError
from mmtrain.model import ModelConfig, TextConfig, VisionConfig

FAMILIES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
INDEX = "model.safetensors.index.json"
FILES_DIR = "hf_files"  # under a `run --save` folder: config, tokenizer, processor, template of the model
# Files of the source folder that an export or a checkpoint carries along (tokenizer, processor, template).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
              "added_tokens.json", "preprocessor_config.json", "chat_template.json", "chat_template.jinja",
              "generation_config.json", "video_preprocessor_config.json", "processor_config.json")
# Qwen2-VL's chat template (the Hub's, without video): written for preset models, whose tokenizer has none.
QWEN2VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] "
    "!= 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>"
    "{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------------ config


def read_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a Qwen2-VL / Qwen2.5-VL folder (model_type checked)."""
    folder = Path(folder).expanduser()
    f = folder / "config.json"
    if not folder.is_dir():
        raise InputError(folder, "--model: no such folder (give a preset: tiny, 100m, 0.5b, 1b, 2b, or a local "
                                 "Hugging Face Qwen2-VL / Qwen2.5-VL folder)")
    if not f.is_file():
        raise InputError(f, "missing: a Hugging Face model folder needs config.json and *.safetensors")
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f, f"not valid JSON: {e}") from None
    mt = cfg.get("model_type") if isinstance(cfg, dict) else None
    if mt not in FAMILIES:
        raise InputError(f, f"model_type {mt!r} is not supported: mmtrain loads Qwen2-VL (qwen2_vl) and "
                            "Qwen2.5-VL (qwen2_5_vl) checkpoints")
    return cfg


def _text_fields(cfg: dict) -> dict[str, Any]:
    """The decoder's fields from either form: top level (Hub) overlaid by `text_config` (transformers 5)."""
    t = {k: v for k, v in cfg.items() if k not in ("vision_config", "text_config")}
    t.update(cfg.get("text_config") or {})
    rope = dict(t.get("rope_scaling") or {})
    rope.update(t.get("rope_parameters") or {})
    t["_rope"] = rope
    return t


def model_config_from_hf(cfg: dict, path: str | Path = "config.json") -> ModelConfig:
    """mmtrain's ModelConfig for a Qwen2-VL / Qwen2.5-VL config.json (either form)."""
    t, v, fam = _text_fields(cfg), cfg.get("vision_config") or {}, cfg["model_type"]
    try:
        rope = t["_rope"]
        section = tuple(int(x) for x in rope.get("mrope_section", (16, 24, 24)))
        tie = cfg.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
        text = TextConfig(layers=t["num_hidden_layers"], hidden=t["hidden_size"], heads=t["num_attention_heads"],
                          kv_heads=t.get("num_key_value_heads", t["num_attention_heads"]),
                          ffn=t["intermediate_size"], mrope_section=section,
                          rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 1_000_000.0))),
                          eps=float(t.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(tie))
        patch, tp = int(v.get("patch_size", 14)), int(v.get("temporal_patch_size", 2))
        common = dict(depth=v["depth"], heads=v["num_heads"], patch_dim=int(v.get("in_channels", v.get("in_chans", 3))) * tp * patch * patch,
                      merge_size=int(v.get("spatial_merge_size", 2)), patch_size=patch,
                      theta=float((v.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
        if fam == "qwen2_vl":
            dim = v["embed_dim"]
            vis = VisionConfig(dim=dim, mlp_dim=int(dim * v.get("mlp_ratio", 4)), **common)
            out = v.get("hidden_size", text.hidden)
        else:
            if v.get("hidden_act", "silu") != "silu":
                raise InputError(path, f"vision hidden_act {v.get('hidden_act')!r}: only silu is supported")
            vis = VisionConfig(dim=v["hidden_size"], mlp_dim=v["intermediate_size"], norm="rmsnorm", mlp="swiglu",
                               window_size=int(v.get("window_size", 112)),
                               fullatt_blocks=tuple(v.get("fullatt_block_indexes", ())), **common)
            out = v.get("out_hidden_size", text.hidden)
    except KeyError as e:
        raise InputError(path, f"config.json lacks {e.args[0]!r} (a Qwen2-VL / Qwen2.5-VL config is needed)") from None
    if t.get("use_sliding_window"):
        raise InputError(path, "use_sliding_window is true: mmtrain's decoder attends to the whole document (set it false)")
    if out != text.hidden:
        raise InputError(path, f"the vision merger's output width {out} differs from the decoder's hidden_size {text.hidden}")
    if sum(section) * 2 != text.head_dim:
        raise InputError(path, f"mrope_section {list(section)} must sum to head_dim/2 = {text.head_dim // 2}")
    return ModelConfig(name=str(cfg.get("_name_or_path") or fam), vision=vis, text=text,
                       vocab_size=int(t["vocab_size"]), image_token_id=int(cfg.get("image_token_id", t.get("image_token_id", 151655))),
                       family=fam, hf_config=cfg)


def token_ids(cfg: dict) -> dict[str, int | None]:
    """The special-token ids a config names (top level or text_config)."""
    t = _text_fields(cfg)
    return {k: t.get(k) for k in ("image_token_id", "vision_start_token_id", "vision_end_token_id")}


def hf_config_of(mc: ModelConfig, tok: Any) -> dict[str, Any]:
    """A Qwen2-VL config.json (transformers 5 form) for a preset model and the tokenizer it trained with."""
    v, t = mc.vision, mc.text
    text = {"model_type": "qwen2_vl_text", "vocab_size": mc.vocab_size, "hidden_size": t.hidden,
            "intermediate_size": t.ffn, "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "num_key_value_heads": t.kv_heads, "hidden_act": "silu", "rms_norm_eps": t.eps,
            "max_position_embeddings": 32768, "tie_word_embeddings": t.tie_embeddings,
            "bos_token_id": tok.endoftext_id, "eos_token_id": tok.im_end_id, "pad_token_id": tok.pad_id,
            "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)}}
    vision = {"model_type": "qwen2_vl_vision", "depth": v.depth, "embed_dim": v.dim, "hidden_size": t.hidden,
              "mlp_ratio": v.mlp_dim // v.dim, "num_heads": v.heads, "in_channels": 3, "patch_size": v.patch_size,
              "spatial_merge_size": v.merge_size, "temporal_patch_size": v.patch_dim // (3 * v.patch_size**2),
              "hidden_act": "quick_gelu"}
    return {"architectures": [FAMILIES["qwen2_vl"]], "model_type": "qwen2_vl", "dtype": "float32",
            "tie_word_embeddings": t.tie_embeddings, "image_token_id": mc.image_token_id,
            "video_token_id": tok.video_pad_id, "vision_start_token_id": tok.vision_start_id,
            "vision_end_token_id": tok.vision_end_id, "text_config": text, "vision_config": vision}


def source_dtype(cfg: dict) -> torch.dtype:
    """The dtype the folder's tensors are stored in (config `dtype` / `torch_dtype`; float32 if unnamed)."""
    name = cfg.get("dtype") or cfg.get("torch_dtype") or (cfg.get("text_config") or {}).get("dtype") or "float32"
    return DTYPES.get(str(name).replace("torch.", ""), torch.float32)


# ------------------------------------------------------------------------------------------ names


def name_pairs(mc: ModelConfig) -> list[tuple[str, str]]:
    """(mmtrain name, Hugging Face name) of every tensor copied as is (the reshaped ones are in `to_hf`)."""
    v, ln = mc.vision, mc.vision.norm == "layernorm"
    wb = ("weight", "bias")
    pairs: list[tuple[str, str]] = []
    for i in range(v.depth):
        a = f"visual.blocks.{i}."
        norms = [f"norm1.{x}" for x in (wb if ln else wb[:1])] + [f"norm2.{x}" for x in (wb if ln else wb[:1])]
        pairs += [(a + n, a + n) for n in norms]
        pairs += [(a + f"qkv.{x}", a + f"attn.qkv.{x}") for x in wb] + [(a + f"proj.{x}", a + f"attn.proj.{x}") for x in wb]
        mlp = ("gate_proj", "up_proj", "down_proj") if v.mlp == "swiglu" else ("fc1", "fc2")
        pairs += [(a + f"{m}.{x}", a + f"mlp.{m}.{x}") for m in mlp for x in wb]
    pairs += [(f"visual.merger_norm.{x}", f"visual.merger.ln_q.{x}") for x in (wb if ln else wb[:1])]
    pairs += [(f"visual.merger_fc1.{x}", f"visual.merger.mlp.0.{x}") for x in wb]
    pairs += [(f"visual.merger_fc2.{x}", f"visual.merger.mlp.2.{x}") for x in wb]
    pairs += [("embed_tokens.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight")]
    for i in range(mc.text.layers):
        a, b = f"layers.{i}.", f"model.layers.{i}."
        pairs += [(a + n, b + n) for n in ("input_layernorm.weight", "post_attention_layernorm.weight")]
        pairs += [(a + f"{p}.{x}", b + f"self_attn.{p}.{x}") for p in ("q_proj", "k_proj", "v_proj") for x in wb]
        pairs += [(a + "o_proj.weight", b + "self_attn.o_proj.weight"), (a + "down_proj.weight", b + "mlp.down_proj.weight")]
    if not mc.text.tie_embeddings:
        pairs.append(("lm_head.weight", "lm_head.weight"))
    return pairs


def to_hf(sd: dict[str, torch.Tensor], mc: ModelConfig) -> dict[str, torch.Tensor]:
    """mmtrain state dict -> Hugging Face tensors (names and shapes of the Hub's checkpoints)."""
    out = {h: sd[m] for m, h in name_pairs(mc)}
    v = mc.vision
    tp = v.patch_dim // (3 * v.patch_size**2)
    out["visual.patch_embed.proj.weight"] = sd["visual.patch_embed.weight"].reshape(v.dim, 3, tp, v.patch_size, v.patch_size)
    for i in range(mc.text.layers):
        gate, up = sd[f"layers.{i}.gate_up_proj.weight"].chunk(2, dim=0)
        out[f"model.layers.{i}.mlp.gate_proj.weight"], out[f"model.layers.{i}.mlp.up_proj.weight"] = gate, up
    return out


def from_hf(hf: dict[str, torch.Tensor], mc: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face tensors -> mmtrain state dict (the inverse of `to_hf`; lm_head is the embedding when tied)."""
    sd = {m: hf[h] for m, h in name_pairs(mc)}
    sd["visual.patch_embed.weight"] = hf["visual.patch_embed.proj.weight"].reshape(mc.vision.dim, -1)
    for i in range(mc.text.layers):
        b = f"model.layers.{i}.mlp."
        sd[f"layers.{i}.gate_up_proj.weight"] = torch.cat([hf[b + "gate_proj.weight"], hf[b + "up_proj.weight"]], 0)
    if mc.text.tie_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    return sd


def normalize_key(k: str) -> str:
    """transformers 5's in-memory names (`model.language_model.*`, `model.visual.*`) -> the Hub's."""
    if k.startswith("model.language_model."):
        return "model." + k[len("model.language_model."):]
    if k.startswith("model.visual."):
        return k[len("model."):]
    return k


# ------------------------------------------------------------------------------------------ tensors


def weight_files(folder: Path) -> dict[str, Path]:
    """Hugging Face tensor name -> the safetensors file holding it, checked against the index when sharded."""
    idx = folder / INDEX
    if idx.is_file():
        try:
            wmap = json.loads(idx.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(idx, f"not a safetensors index (needs a weight_map): {e}") from None
        for name in sorted(set(wmap.values())):
            if not (folder / name).is_file():
                raise InputError(folder / name, f"missing: {INDEX} names it; copy the complete checkpoint "
                                                "(every model-*.safetensors shard) into the folder")
        return {k: folder / f for k, f in wmap.items()}
    single = folder / "model.safetensors"
    files = [single] if single.is_file() else sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(folder, "no *.safetensors weights in this folder (convert .bin weights with "
                                 "transformers: from_pretrained(DIR).save_pretrained(DIR))")
    if len(files) > 1 and not single.is_file():
        raise InputError(folder / INDEX, f"missing: {len(files)} safetensors shards but no index naming their tensors")
    from safetensors import safe_open

    with safe_open(files[0], "pt") as f:
        return {k: files[0] for k in f.keys()}


def read_hf_tensors(folder: str | Path, mc: ModelConfig) -> dict[str, torch.Tensor]:
    """The folder's tensors under the Hub's names, each checked present and of the shape the config gives."""
    from safetensors import safe_open

    from mmtrain.model import VLModel

    folder = Path(folder).expanduser()
    files = weight_files(folder)
    where = {normalize_key(k): f for k, f in files.items()}
    raw = {normalize_key(k): k for k in files}  # the name as stored
    with torch.device("meta"):
        expected = to_hf(VLModel(mc, _cpu_accel()).state_dict(), mc)
    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for k in expected:
        if k not in where:
            raise InputError(folder, f"tensor {k} is missing from the safetensors (a partial or foreign checkpoint; "
                                     "re-download or re-save the complete model)")
        by_file.setdefault(where[k], []).append(k)
    for path, names in by_file.items():
        try:
            with safe_open(path, "pt") as f:
                for k in names:
                    t = f.get_tensor(raw[k])
                    if tuple(t.shape) != tuple(expected[k].shape):
                        raise InputError(path, f"tensor {k} has shape {list(t.shape)}, config.json gives "
                                               f"{list(expected[k].shape)}: the weights do not belong to this config")
                    out[k] = t
        except InputError:
            raise
        except Exception as e:  # safetensors: truncated / corrupt file, or a name the index misplaces
            raise InputError(path, f"cannot read tensors: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return out


def _cpu_accel():
    from mmtrain.accel import get_accel

    return get_accel("cpu")


def write_safetensors(out: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int = 5 * 2**30) -> None:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` + index when over `max_shard_bytes`."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += n
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
        return
    wmap, total = {}, sum(t.numel() * t.element_size() for t in tensors.values())
    for i, sh in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, str(out / name), metadata=meta)
        wmap.update({k: name for k in sh})
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wmap}, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ checks


def check_tokenizer(cfg: dict, folder: Path, tok: Any, vocab_size: int) -> None:
    """The tokenizer's image_pad / vision_start / vision_end ids are the config's, and fit its vocabulary."""
    ids = token_ids(cfg)
    for tok_field, cfg_field, name in (("image_pad_id", "image_token_id", "<|image_pad|>"),
                                       ("vision_start_id", "vision_start_token_id", "<|vision_start|>"),
                                       ("vision_end_id", "vision_end_token_id", "<|vision_end|>")):
        want, have = ids[cfg_field], getattr(tok, tok_field)
        if want is not None and have != want:
            raise InputError(tok.path, f"{name} is id {have} in this tokenizer but {folder / 'config.json'} has "
                                       f"{cfg_field} {want}: use the tokenizer saved with the model (--tokenizer {folder})")
    if tok.vocab_size > vocab_size:
        raise InputError(tok.path, f"the tokenizer has {tok.vocab_size} ids but the model's vocab_size is {vocab_size}: "
                                   f"use the tokenizer saved with the model (--tokenizer {folder})")


def processor_budget(folder: Path) -> dict[str, int]:
    """patch_size, merge_size, min_pixels and max_pixels of the folder's preprocessor_config.json."""
    f = folder / "preprocessor_config.json"
    if not f.is_file():
        return {}
    try:
        p = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f, f"not valid JSON: {e}") from None
    size = p.get("size") or {}
    out = {"patch_size": p.get("patch_size", 14), "merge_size": p.get("merge_size", 2),
           "min_pixels": p.get("min_pixels", size.get("shortest_edge")),
           "max_pixels": p.get("max_pixels", size.get("longest_edge"))}
    return {k: int(v) for k, v in out.items() if v is not None}


def check_shards_fit(shards: list[str], folder: Path) -> None:
    """Shards were made for this model's processor: rule qwen2vl, the same 28-pixel factor, and no image over
    the processor's max_pixels (it would resize again, so the stored pixels would not be what the model sees)."""
    proc = processor_budget(folder)
    if not proc:
        return
    factor = proc["patch_size"] * proc["merge_size"]
    pre = folder / "preprocessor_config.json"
    for s in shards:
        m = Path(s) / MANIFEST
        if not m.is_file():
            continue
        try:
            opts = json.loads(m.read_text(encoding="utf-8")).get("options") or {}
        except (OSError, ValueError, AttributeError):
            continue
        rule = opts.get("rule", "qwen2vl")
        if rule != "qwen2vl":
            raise InputError(m, f"shards made with --rule {rule}, but {folder} is a Qwen2-VL-family model: "
                                "reshard with --rule qwen2vl")
        if factor != 28:
            raise InputError(pre, f"patch_size x merge_size = {factor}, but mmdata's qwen2vl shards use 28: "
                                  "reshard for this processor")
        tokens = opts.get("max_image_tokens")
        if tokens and "max_pixels" in proc and tokens * factor * factor > proc["max_pixels"]:
            fit = proc["max_pixels"] // (factor * factor)
            raise InputError(m, f"shards allow {tokens} tokens per image but {pre} caps images at max_pixels "
                                f"{proc['max_pixels']} ({fit} tokens): reshard with --max-image-tokens {fit}")


# ------------------------------------------------------------------------------------------ build


def load_hf_model(folder: str | Path, accel: Any, device: Any = None) -> Any:
    """mmtrain's VLModel with the folder's architecture and weights (float32 parameters), filled tensor by
    tensor: peak host memory is the folder's tensors plus the model, with no random init first."""
    from mmtrain.model import empty_model

    folder = Path(folder).expanduser()
    cfg = read_config(folder)
    mc = model_config_from_hf(cfg, folder / "config.json")
    hf = read_hf_tensors(folder, mc)
    model = empty_model(mc, accel, device)
    params = model.state_dict(keep_vars=True)
    sd = from_hf(hf, mc)
    if set(sd) != set(params):  # every parameter filled: an empty_model is uninitialised memory
        raise RuntimeError(f"name map out of step with the model: {sorted(set(sd) ^ set(params))[:5]}")
    with torch.no_grad():
        for k, v in sd.items():
            params[k].copy_(v)
    return model


def model_from_args(args: Any, vocab_size: int, image_token_id: int, accel: Any) -> Any:
    """`--model`: a preset built for the tokenizer, or a Hugging Face folder checked against the tokenizer
    and the shards' manifests, then loaded."""
    from mmtrain.args import MODEL_NAMES, tokenizer_path
    from mmtrain.model import build_model

    if args.model in MODEL_NAMES:
        return build_model(args.model, vocab_size, image_token_id, accel=accel)
    from mmdata.loader import load_tokenizer

    folder = Path(args.model).expanduser()
    cfg = read_config(folder)
    mc = model_config_from_hf(cfg, folder / "config.json")
    check_tokenizer(cfg, folder, load_tokenizer(tokenizer_path(args)), mc.vocab_size)
    check_shards_fit(list(args.shards), folder)
    return load_hf_model(folder, accel)


def write_tokenizer_files(out: Path, tokenizer_json: str | Path | None = None) -> None:
    """A tokenizer that transformers loads: `tokenizer_json` (default: mmdata's shipped one) with a Qwen2-style
    tokenizer_config.json carrying Qwen2-VL's chat template (preset models train with the same layout)."""
    import shutil

    from mmdata.loader import load_tokenizer

    tok = load_tokenizer(tokenizer_json)
    shutil.copy(tok.path, out / "tokenizer.json")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": tok.decode([tok.pad_id]),
           "model_max_length": 32768, "chat_template": QWEN2VL_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ save


def preset_processor_config(max_image_tokens: int = 1280) -> dict[str, Any]:
    """Qwen2VLImageProcessor's settings for a preset model (the loader's CLIP normalisation, 28-pixel factor)."""
    from mmtrain.model import CLIP_MEAN, CLIP_STD

    return {"image_processor_type": "Qwen2VLImageProcessor", "do_convert_rgb": True, "do_resize": True,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD), "resample": 3, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
            "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * max_image_tokens}}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def save_model_files(out: str | Path, mc: ModelConfig, model_arg: str, tokenizer: str | None) -> Path:
    """Everything of an HF folder but the weights, for the model being trained: config.json, the tokenizer it
    trains with, the processor, chat template and generation config (copied from a source folder; made for a
    preset). `mmtrain export` and `generate` read it, so a checkpoint never depends on the source folder."""
    import shutil

    from mmdata.loader import load_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if mc.hf_config is not None:
        src = Path(model_arg).expanduser()
        for name in SIDE_FILES:
            if (src / name).is_file():
                shutil.copy(src / name, out / name)
        config = mc.hf_config
    else:
        tok = load_tokenizer(tokenizer)
        config = hf_config_of(mc, tok)
        _write_json(out / "preprocessor_config.json", preset_processor_config())
        _write_json(out / "generation_config.json", {"bos_token_id": tok.endoftext_id, "pad_token_id": tok.pad_id,
                                                     "eos_token_id": [i for i in (tok.im_end_id, tok.endoftext_id) if i is not None]})
    tok_dir = Path(tokenizer).expanduser() if tokenizer else None
    tok_dir = tok_dir.parent if tok_dir is not None and tok_dir.is_file() else tok_dir
    if mc.hf_config is not None and (tok_dir is None or tok_dir.resolve() == Path(model_arg).expanduser().resolve()):
        pass  # the folder's own tokenizer files, copied above
    elif tok_dir is not None and (tok_dir / "tokenizer_config.json").is_file():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (tok_dir / name).is_file():
                shutil.copy(tok_dir / name, out / name)
    else:  # a bare tokenizer.json (the shipped one): give it a Qwen2 tokenizer_config.json and template
        write_tokenizer_files(out, tokenizer)
    _write_json(out / "config.json", config)
    return out


def write_hf_folder(out: str | Path, sd: dict[str, torch.Tensor], files: str | Path) -> Path:
    """An HF folder from an mmtrain state dict and the model's files (`save_model_files`): tensors in HF names,
    in the source dtype, then config, tokenizer, processor and template copied beside them."""
    import shutil

    files, out = Path(files), Path(out)
    cfg = read_config(files)
    mc = model_config_from_hf(cfg, files / "config.json")
    dtype = source_dtype(cfg)
    hf = {k: v.detach().to("cpu", dtype) for k, v in to_hf(sd, mc).items()}
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.safetensors")) + [out / INDEX]:
        old.unlink(missing_ok=True)
    write_safetensors(out, hf)
    for f in files.iterdir():
        if f.is_file() and f.name != INDEX and not f.name.endswith(".safetensors"):
            shutil.copy(f, out / f.name)
    return out


def save_hf(out: str | Path, sd: dict[str, torch.Tensor], mc: ModelConfig, model_arg: str, tokenizer: str | None) -> Path:
    """`run --save-hf DIR`: the final weights as an HF folder (as `mmtrain export` would write them)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return write_hf_folder(out, sd, save_model_files(Path(tmp) / FILES_DIR, mc, model_arg, tokenizer))
