"""`mmtrain generate`: greedy decoding with a KV cache from an HF folder or an `mmtrain run --save` checkpoint.

One user turn (the images in order, then the prompt) is rendered with the model's chat template and
`add_generation_prompt`; images go through transformers' own `Qwen2VLImageProcessor` (from the folder's
preprocessor_config.json, offline), so the pixels are exactly the processor's; each `<|image_pad|>` is
expanded to the image's token count as `Qwen2VLProcessor` does. The model is mmtrain's; positions are the
loader's M-RoPE (`mrope_position_ids`), then one more per new token. No logits processors: argmax until a
`generation_config` eos id or `--max-new-tokens`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmdata.errors import InputError
from mmtrain import hf


@dataclass
class Loaded:
    model: Any  # VLModel in eval mode, float32
    files: Path  # the folder holding config, tokenizer, processor and template
    source: str  # what was loaded, for the log


def files_of_checkpoint(ckpt_dir: Path) -> Path:
    """The model files `mmtrain run --save` keeps beside its checkpoints."""
    files = ckpt_dir / hf.FILES_DIR
    if not (files / "config.json").is_file():
        raise InputError(ckpt_dir, f"no {hf.FILES_DIR}/config.json: not a checkpoint folder of `mmtrain run --save` "
                                   "(or one written before HF support; rerun with --load to save again)")
    return files


def load_for_inference(model: str, accel: Any, iteration: int | None = None) -> Loaded:
    """An HF folder (config.json + safetensors) or a checkpoint folder (its latest or given iteration)."""
    from mmtrain.checkpoint import load_model_state_dict
    from mmtrain.model import empty_model

    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return Loaded(hf.load_hf_model(path, accel).eval(), path, str(path))
    if not path.is_dir():
        raise InputError(path, "--model: no such folder (an HF model folder or a `mmtrain run --save` folder)")
    files = files_of_checkpoint(path)
    mc = hf.model_config_from_hf(hf.read_config(files), files / "config.json")
    it, sd = load_model_state_dict(path, iteration)
    m = empty_model(mc, accel)
    m.load_state_dict(sd)
    return Loaded(m.eval(), files, f"{path} iteration {it}")


def chat_template(files: Path, tokenizer: Any) -> str:
    """The model's chat template: chat_template.jinja, chat_template.json, else tokenizer_config.json's."""
    if (files / "chat_template.jinja").is_file():
        return (files / "chat_template.jinja").read_text(encoding="utf-8")
    if (files / "chat_template.json").is_file():
        return json.loads((files / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    if tokenizer.chat_template:
        return tokenizer.chat_template
    raise InputError(files, "no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json)")


def prompt_inputs(files: Path, images: list[str], prompt: str) -> dict[str, Any]:
    """input_ids [L], pixel_values, image_grid_thw of one user turn, and the tokenizer (for decoding)."""
    try:
        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers.image_utils import load_image
    except ImportError as e:
        raise InputError(None, f"mmtrain generate needs transformers (pip install 'transformers>=5'): {e}") from None
    tok = AutoTokenizer.from_pretrained(files)
    msgs = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]}]
    text = tok.apply_chat_template(msgs, chat_template=chat_template(files, tok), add_generation_prompt=True,
                                   tokenize=False)
    out: dict[str, Any] = {"tokenizer": tok}
    if images:
        pics = []
        for p in images:
            try:
                pics.append(load_image(str(p)))
            except Exception as e:
                raise InputError(p, f"cannot read image: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if not (files / "preprocessor_config.json").is_file():
            raise InputError(files / "preprocessor_config.json", "missing: the image processor's settings are needed "
                                                                 "for --image (copy it from the original model folder)")
        proc = AutoImageProcessor.from_pretrained(files)
        px = proc(images=pics, return_tensors="pt")
        out["pixel_values"], out["image_grid_thw"] = px["pixel_values"], px["image_grid_thw"]
        merge = int(getattr(proc, "merge_size", 2))
        pieces = text.split("<|image_pad|>")
        if len(pieces) - 1 != len(images):
            raise InputError(files, f"the chat template wrote {len(pieces) - 1} <|image_pad|> for {len(images)} images")
        counts = (out["image_grid_thw"].prod(-1) // merge**2).tolist()
        text = pieces[0] + "".join("<|image_pad|>" * n + rest for n, rest in zip(counts, pieces[1:]))
    out["input_ids"] = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    return out


def eos_ids(files: Path) -> set[int]:
    """generation_config.json's eos ids (else config.json's)."""
    for name in ("generation_config.json", "config.json"):
        f = files / name
        if f.is_file():
            cfg = json.loads(f.read_text(encoding="utf-8"))
            e = cfg.get("eos_token_id", (cfg.get("text_config") or {}).get("eos_token_id"))
            if e is not None:
                return set(e) if isinstance(e, list) else {int(e)}
    return set()


@torch.no_grad()
def greedy(model: Any, inputs: dict[str, Any], eos: set[int], max_new_tokens: int, vision_start_id: int) -> list[int]:
    """Greedy tokens after the prompt: one prefill, then one cached step per token."""
    from mmdata.loader import mrope_position_ids

    ids = inputs["input_ids"]
    dev = model.embed_tokens.weight.device
    grid = inputs.get("image_grid_thw")
    pos = mrope_position_ids(ids.numpy(), grid.numpy() if grid is not None else [], model.cfg.vision.merge_size,
                             vision_start_id, model.cfg.image_token_id)
    pos = torch.as_tensor(pos)
    batch = {"input_ids": ids[None].to(dev)}
    if grid is not None:
        batch["pixel_values"], batch["image_grid_thw"] = inputs["pixel_values"].to(dev), grid.to(dev)
    caches: list[dict] = [{} for _ in model.layers]
    logits = model.forward_cached(model.embed(batch), pos, caches)
    nxt, out = int(pos.max()) + 1, []
    while len(out) < max_new_tokens:
        tok = int(logits.argmax())
        out.append(tok)
        if tok in eos:
            break
        x = model.embed_tokens(torch.tensor([tok], device=dev))
        logits = model.forward_cached(x, torch.full((3, 1), nxt), caches)
        nxt += 1
    return out


def generate(model: str, images: list[str], prompt: str, max_new_tokens: int = 128, device: str = "auto",
             log=None) -> tuple[str, list[int]]:
    """The answer text (special tokens skipped) and its token ids."""
    from mmtrain.accel import get_accel

    log = log or sys.stderr
    accel = get_accel(device, use_flash_attn=False)
    loaded = load_for_inference(model, accel)
    inputs = prompt_inputs(loaded.files, images, prompt)
    cfg = hf.read_config(loaded.files)
    vs = hf.token_ids(cfg)["vision_start_token_id"]
    print(f"generate: {loaded.source} on {accel.kind}, {len(images)} image(s), prompt of "
          f"{inputs['input_ids'].numel()} tokens", file=log, flush=True)
    toks = greedy(loaded.model, inputs, eos_ids(loaded.files), max_new_tokens, int(vs if vs is not None else 151652))
    return inputs["tokenizer"].decode(toks, skip_special_tokens=True), toks
