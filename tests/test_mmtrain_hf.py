"""mmtrain loads Hugging Face Qwen2-VL / Qwen2.5-VL folders: per-token logits of a packed loader row equal
transformers' on each document alone (eager attention, unpacked), in fp32 and bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from hf_tiny import save_tiny  # noqa: E402
from loader_helpers import make_records, write_shards  # noqa: E402

from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer  # noqa: E402
from mmtrain.accel import get_accel  # noqa: E402
from mmtrain.hf import load_hf_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def packed_row(tmp_path_factory) -> dict:
    """One loader row (float32 pixels) holding several documents, at least two of them with images."""
    root = tmp_path_factory.mktemp("hfrow")
    recs = make_records(12, seed=5, max_images=2, sizes=((112, 112), (168, 112), (56, 168)), text_words=(3, 12))
    write_shards(root / "shards", recs)
    cfg = LoaderConfig(seq_len=640, seed=1, pixel_dtype="float32")
    loader = PackedLoader(str(root / "shards"), tokenizer=load_tokenizer(), config=cfg, num_workers=0)
    for row in loader:
        img_docs = docs_with_images(row)
        if len(row["cu_seqlens"]) - 1 >= 3 and img_docs >= 2:
            return row
    pytest.fail("no packed row with 3+ documents and 2+ images")


def docs_with_images(row: dict) -> int:
    ids, cu = row["input_ids"][0], row["cu_seqlens"].tolist()
    tok = load_tokenizer()
    return sum(int((ids[a:b] == tok.image_pad_id).any()) for a, b in zip(cu[:-1], cu[1:]))


def split_documents(row: dict) -> list[dict]:
    """Each document of the row with its own input_ids, pixel rows and grid rows (what transformers is fed)."""
    tok = load_tokenizer()
    ids, cu = row["input_ids"][0], row["cu_seqlens"].tolist()
    grid = row["image_grid_thw"]
    sizes = [int(t * h * w) for t, h, w in grid.tolist()]
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)
    docs, img = [], 0
    for a, b in zip(cu[:-1], cu[1:]):
        d_ids = ids[a:b]
        n_tok, k = int((d_ids == tok.image_pad_id).sum()), img
        while n_tok > 0:
            n_tok -= sizes[img] // 4
            img += 1
        doc = {"start": a, "end": b, "input_ids": d_ids.unsqueeze(0),
               "mm_token_type_ids": (d_ids == tok.image_pad_id).long().unsqueeze(0)}
        if img > k:
            doc["pixel_values"] = row["pixel_values"][starts[k]:starts[img]]
            doc["image_grid_thw"] = grid[k:img]
        docs.append(doc)
    return docs


def hf_model(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager", dtype=dtype).eval()


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def folder(request, tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp(request.param) / "m", request.param, tie=request.param == "qwen2_5_vl")


def max_logit_diff(folder: Path, row: dict, dtype: torch.dtype) -> tuple[float, float]:
    """(max |our logit - transformers' logit| over the row's documents, max |transformers' logit|)."""
    ours = load_hf_model(folder, get_accel("cpu")).eval()
    theirs = hf_model(folder, dtype)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        mine = ours.logits(row)
    worst = scale = 0.0
    with torch.no_grad():
        for d in split_documents(row):
            kw = {k: d[k].to(dtype) if k == "pixel_values" else d[k] for k in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw") if k in d}
            ref = theirs(**kw).logits[0].float()
            worst = max(worst, float((mine[d["start"]:d["end"]] - ref).abs().max()))
            scale = max(scale, float(ref.abs().max()))
    return worst, scale


def test_packed_logits_equal_transformers_per_document_fp32(folder, packed_row):
    diff, scale = max_logit_diff(folder, packed_row, torch.float32)
    print(f"fp32 max |logit diff| {folder.parent.name}: {diff:.2e} (logits up to {scale:.2f})")
    assert diff < 1e-4 and scale > 1.0


def test_packed_logits_equal_transformers_per_document_bf16(folder, packed_row):
    """bf16: our fp32 weights under bf16 autocast (the recipe's --bf16) vs transformers' bf16 weights: within
    3% of the largest logit (bf16 keeps 8 bits; a wrong window, norm or rope is off by ~25%)."""
    diff, scale = max_logit_diff(folder, packed_row, torch.bfloat16)
    print(f"bf16 max |logit diff| {folder.parent.name}: {diff:.2e} (logits up to {scale:.2f})")
    assert diff < 0.03 * scale
