"""`mmtrain export CKPT_DIR --hf OUT_DIR [--iteration N]`: a `run --save` checkpoint as a Hugging Face folder
(safetensors in the Hub's names and the source dtype, config, tokenizer, processor, chat template).
CKPT_DIR may be an `s3://` url: its model files are fetched into a temp folder, its weights read through
the storage seam."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mmdata import storage
from mmdata.errors import InputError
from mmtrain import hf
from mmtrain.checkpoint import load_model_state_dict


def export(ckpt_dir: str | Path, out: str | Path, iteration: int | None = None) -> tuple[int, Path]:
    """Write iteration `iteration` (default: the latest) of `ckpt_dir` to `out`; returns (iteration, out)."""
    if storage.is_remote(ckpt_dir):
        return _export_remote(str(ckpt_dir), Path(out).expanduser(), iteration)
    ckpt_dir, out = Path(ckpt_dir).expanduser(), Path(out).expanduser()
    files = ckpt_dir / hf.FILES_DIR
    if not (files / "config.json").is_file():
        raise InputError(ckpt_dir, f"no {hf.FILES_DIR}/config.json: not a checkpoint folder of `mmtrain run --save`")
    if out.resolve() == ckpt_dir.resolve() or (out.exists() and not out.is_dir()):
        raise InputError(out, "--hf needs a new or existing folder other than the checkpoint folder")
    it, sd = load_model_state_dict(ckpt_dir, iteration)
    return it, hf.write_hf_folder(out, sd, files)


def _export_remote(url: str, out: Path, iteration: int | None) -> tuple[int, Path]:
    files_url = storage.join(url, hf.FILES_DIR)
    if not storage.exists(storage.join(files_url, "config.json")):
        raise InputError(url, f"no {hf.FILES_DIR}/config.json: not a checkpoint folder of `mmtrain run --save`")
    if out.exists() and not out.is_dir():
        raise InputError(out, "--hf needs a new or existing folder")
    it, sd = load_model_state_dict(url, iteration)
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp) / hf.FILES_DIR
        files.mkdir()
        for name in storage.listdir(files_url):
            (files / name).write_bytes(storage.read_bytes(storage.join(files_url, name)))
        return it, hf.write_hf_folder(out, sd, files)
