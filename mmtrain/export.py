"""`mmtrain export CKPT_DIR --hf OUT_DIR [--iteration N]`: a `run --save` checkpoint as a Hugging Face folder
(safetensors in the Hub's names and the source dtype, config, tokenizer, processor, chat template)."""

from __future__ import annotations

from pathlib import Path

from mmdata.errors import InputError
from mmtrain import hf
from mmtrain.checkpoint import load_model_state_dict


def export(ckpt_dir: str | Path, out: str | Path, iteration: int | None = None) -> tuple[int, Path]:
    """Write iteration `iteration` (default: the latest) of `ckpt_dir` to `out`; returns (iteration, out)."""
    ckpt_dir, out = Path(ckpt_dir).expanduser(), Path(out).expanduser()
    files = ckpt_dir / hf.FILES_DIR
    if not (files / "config.json").is_file():
        raise InputError(ckpt_dir, f"no {hf.FILES_DIR}/config.json: not a checkpoint folder of `mmtrain run --save`")
    if out.resolve() == ckpt_dir.resolve() or (out.exists() and not out.is_dir()):
        raise InputError(out, "--hf needs a new or existing folder other than the checkpoint folder")
    it, sd = load_model_state_dict(ckpt_dir, iteration)
    return it, hf.write_hf_folder(out, sd, files)
