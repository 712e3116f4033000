"""`mmtrain generate`: on the same tiny random weights, image and prompt, its greedy tokens equal transformers'
`generate(do_sample=False)` (Qwen2-VL and Qwen2.5-VL, one and two images, HF folder and checkpoint folder);
the CLI prints only the answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from hf_tiny import save_tiny  # noqa: E402
from loader_helpers import picture  # noqa: E402

from mmtrain.generate import chat_template, generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Describe this image in detail."
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("img")
    out = []
    for i, (w, h) in enumerate(((131, 97), (60, 200))):  # not multiples of 28: the processor resizes
        p = root / f"im{i}.jpg"
        p.write_bytes(picture(w, h, seed=i))
        out.append(p)
    return out


def transformers_tokens(folder: Path, images: list[Path], prompt: str, n: int) -> list[int]:
    """The reference: the folder's tokenizer, chat template and image processor, the pads expanded as
    Qwen2VLProcessor does (it cannot be built without torchvision here), transformers' greedy generate."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(folder)
    msgs = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]}]
    text = tok.apply_chat_template(msgs, chat_template=chat_template(folder, tok), add_generation_prompt=True,
                                   tokenize=False)
    inputs = {}
    if images:
        inputs = dict(AutoImageProcessor.from_pretrained(folder)(images=[Image.open(p) for p in images], return_tensors="pt"))
        for t, h, w in inputs["image_grid_thw"].tolist():
            text = text.replace("<|image_pad|>", "<|placeholder|>" * (t * h * w // 4), 1)
        text = text.replace("<|placeholder|>", "<|image_pad|>")
    ids = tok([text], return_tensors="pt", add_special_tokens=False)["input_ids"]
    inputs |= {"input_ids": ids, "attention_mask": torch.ones_like(ids),
               "mm_token_type_ids": (ids == tok.convert_tokens_to_ids("<|image_pad|>")).long()}
    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager").eval()
    gen = GenerationConfig.from_pretrained(folder)
    with torch.no_grad():
        out = model.generate(**inputs, generation_config=gen, do_sample=False, max_new_tokens=n)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family,n_images", [("qwen2_vl", 1), ("qwen2_vl", 2), ("qwen2_5_vl", 2), ("qwen2_5_vl", 0)])
def test_greedy_tokens_equal_transformers(family, n_images, images, tmp_path):
    folder = save_tiny(tmp_path / "m", family, seed=3)
    imgs = [str(p) for p in images[:n_images]]
    _, mine = generate(str(folder), imgs, PROMPT, max_new_tokens=24, device="cpu", log=open(os.devnull, "w"))
    ref = transformers_tokens(folder, images[:n_images], PROMPT, 24)
    assert mine == ref and len(mine) >= 2


def test_cli_prints_only_the_answer_from_a_checkpoint(images, tmp_path):
    """A `run --max-steps 0 --save` folder of an HF model answers exactly as the HF folder itself."""
    from loader_helpers import make_records, write_shards

    from mmtrain.run import TrainArgs, train

    folder = save_tiny(tmp_path / "m", "qwen2_vl", seed=4)
    write_shards(tmp_path / "sh", make_records(4, seed=1))
    train(TrainArgs(shards=[str(tmp_path / "sh")], model=str(folder), seq_len=512, global_batch_size=1, max_steps=0,
                    device="cpu", num_workers=0, save=str(tmp_path / "ck")), out=open(os.devnull, "w"))
    text, _ = generate(str(folder), [str(images[0])], PROMPT, max_new_tokens=12, device="cpu", log=open(os.devnull, "w"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "mmtrain.cli", "generate", "--model", str(tmp_path / "ck"), "--image",
                        str(images[0]), "--prompt", PROMPT, "--max-new-tokens", "12", "--device", "cpu"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == text + "\n" and "iteration 0" in r.stderr
