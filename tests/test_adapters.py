"""Adapters from the canonical packed row to MindSpeed-MM, Megatron-Bridge, Megatron-LM and torch_npu."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdata.loader.adapters import (
    VisualInputs,
    flash_attn_varlen_kwargs,
    npu_fusion_attention_kwargs,
    to_megatron_bridge,
    to_megatron_lm_llava,
    to_mindspeed_fsdp2,
    to_mindspeed_mcore,
    to_mindspeed_seqpack,
)
from mmdata.models.rope import mrope_position_ids
from mmdata.text.templates import encode_conversation
from mmdata.text.tokenizer import load_tokenizer

I = -100  # noqa: E741


def two_doc_batch(tail: int = 3, images: bool = True) -> dict:
    """Doc A: 5 tokens, doc B: 4 tokens (B holds one 2x2-patch image = 1 merged pad), then ``tail`` pads."""
    ids = [10, 11, 12, 13, 14, 20, 90, 92, 23] + [0] * tail
    labels = [I, I, 12, 13, 14, I, I, I, 23] + [I] * tail
    T = len(ids)
    pos = np.zeros((3, 1, T), dtype=np.int64)
    pos[:, 0, :5] = np.arange(5)
    pos[:, 0, 5:9] = mrope_position_ids(np.array(ids[5:9]), np.array([[1, 2, 2]]), 2, 90, 92)
    text_pos = [0, 1, 2, 3, 4, 0, 1, 2, 3] + [0] * tail
    b = {
        "input_ids": torch.tensor([ids], dtype=torch.int64),
        "labels": torch.tensor([labels], dtype=torch.int64),
        "attention_mask": torch.tensor([[1] * 9 + [0] * tail], dtype=torch.int64),
        "position_ids": torch.from_numpy(pos),
        "text_position_ids": torch.tensor([text_pos], dtype=torch.int64),
        "cu_seqlens": torch.tensor([0, 5, 9], dtype=torch.int32),
        "cu_seqlens_padded": torch.tensor([0, 5, 9 + tail], dtype=torch.int32),
        "max_seqlen": max(5, 4 + tail),
        "seqlens": torch.tensor([5, 4], dtype=torch.int64),
        "pixel_values": torch.rand(4 if images else 0, 1176),
        "image_grid_thw": torch.tensor([[1, 2, 2]] if images else [], dtype=torch.int64).reshape(-1, 3),
        "sample_ids": ["a", "b"],
        "num_loss_tokens": 4,
        "num_real_tokens": 9,
    }
    return b


def test_mindspeed_mcore_passes_the_model_kwargs():
    b = two_doc_batch()
    out = to_mindspeed_mcore(b)
    assert set(out) == {"input_ids", "labels", "attention_mask", "position_ids", "pixel_values", "image_grid_thw"}
    for k in out:
        assert out[k] is b[k]
    assert out["position_ids"].shape == (3, 1, 12) and out["labels"].dtype == torch.int64
    # documents are recoverable from the temporal row, as MindSpeed's use_remove_padding does
    assert torch.nonzero(out["position_ids"][0, 0] == 0).reshape(-1)[:2].tolist() == [0, 5]
    text_only = to_mindspeed_mcore(two_doc_batch(images=False))
    assert text_only["pixel_values"] is None and text_only["image_grid_thw"] is None


def test_mindspeed_seqpack_needs_a_pad_free_row():
    with pytest.raises(ValueError, match="SeqPack rows may not carry tail padding; this row has 3 pad token"):
        to_mindspeed_seqpack(two_doc_batch(tail=3))
    b = two_doc_batch(tail=0)
    out = to_mindspeed_seqpack(b)
    assert set(out) == {"seqlens", "input_ids", "labels", "attention_mask", "pixel_values", "image_grid_thw", "indices"}
    assert out["seqlens"].tolist() == [5, 4] and out["seqlens"].dtype == torch.int64
    assert out["attention_mask"].tolist() == [[1] * 9] and out["attention_mask"].dtype == torch.int64
    assert out["indices"].tolist() == list(range(9)) and out["indices"].dtype == torch.int64
    assert out["labels"] is b["labels"]


def test_mindspeed_fsdp2_cu_seqlens_is_int64_2d():
    out = to_mindspeed_fsdp2(two_doc_batch(tail=3))
    assert out["cu_seqlens"].dtype == torch.int64
    assert out["cu_seqlens"].tolist() == [[0, 5, 12]]
    assert out["position_ids"].dim() == 3
    assert "seqlens" not in out


def per_doc_shift(labels: list[int], cu: list[int]) -> list[int]:
    out: list[int] = []
    for s, e in zip(cu[:-1], cu[1:]):
        out += labels[s + 1:e] + [I]
    return out


def test_megatron_bridge_labels_are_a_per_document_shift():
    b = two_doc_batch(tail=3)
    out = to_megatron_bridge(b)
    assert out["labels"].tolist() == [[I, 12, 13, 14, I, I, I, 23, I, I, I, I]]
    assert out["labels"].tolist()[0] == per_doc_shift(b["labels"][0].tolist(), [0, 5, 9, 12])
    assert out["loss_mask"].dtype == torch.float32
    assert out["loss_mask"].tolist() == [[0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0]]
    assert out["position_ids"] is b["text_position_ids"]
    assert out["attention_mask"] is None
    assert out["cu_seqlens_q"].dtype == torch.int32 and out["cu_seqlens_q"].tolist() == [0, 5, 9]
    assert out["cu_seqlens_kv"].tolist() == [0, 5, 9]
    assert out["cu_seqlens_q_padded"].tolist() == out["cu_seqlens_kv_padded"].tolist() == [0, 5, 12]
    assert out["cu_seqlens_q_padded"].dtype == torch.int32
    assert out["max_seqlen_q"].dtype == torch.int32 and out["max_seqlen_q"].dim() == 0
    assert int(out["max_seqlen_q"]) == int(out["max_seqlen_kv"]) == 7
    assert out["total_tokens"] == 12
    vi = out["visual_inputs"]
    assert isinstance(vi, VisualInputs)
    assert vi.pixel_values is b["pixel_values"] and vi.image_grid_thw is b["image_grid_thw"]
    assert set(vi.normalized_for_model()) == {"pixel_values", "image_grid_thw"}
    assert b["labels"][0, 2] == 12  # the input batch is left untouched


def test_megatron_bridge_without_tail_has_no_padded_keys():
    out = to_megatron_bridge(two_doc_batch(tail=0, images=False))
    assert "cu_seqlens_q_padded" not in out and "cu_seqlens_kv_padded" not in out
    assert out["visual_inputs"].as_model_kwargs() == {}
    assert out["total_tokens"] == 9


def test_megatron_lm_llava_text_only_dummies():
    b = two_doc_batch(tail=3, images=False)
    out = to_megatron_lm_llava(b)
    assert out["tokens"] is b["input_ids"]
    assert out["labels"].shape == (1, 13) and out["labels"][0, -1] == I
    assert torch.equal(out["labels"][:, :12], b["labels"])
    assert out["imgs"].tolist() == [[0.0]] and out["imgs"].dtype == torch.float32
    assert out["num_tiles"].tolist() == [[0]] and out["num_tiles"].dtype == torch.int32
    assert out["cu_lengths"].dtype == torch.int32 and out["cu_lengths"].tolist() == [[0, 5, 12]]
    assert out["max_lengths"].dtype == torch.int32 and out["max_lengths"].tolist() == [7]


def test_megatron_lm_llava_cu_lengths_in_expanded_space():
    b = two_doc_batch(tail=0)
    b["input_ids"][0, 7] = 55  # doc B's single <image> placeholder (id 55)
    b["imgs"] = torch.rand(2, 3, 8, 8)
    b["num_tiles"] = torch.tensor([2])
    out = to_megatron_lm_llava(b, image_token_id=55, img_seq_len=4)
    # doc B: 4 tokens - 1 placeholder + 2 tiles x 4 embeddings = 11
    assert out["cu_lengths"].tolist() == [[0, 5, 16]]
    assert out["max_lengths"].tolist() == [11]
    assert out["num_tiles"].dtype == torch.int32 and out["imgs"].shape == (2, 3, 8, 8)
    del b["imgs"]
    with pytest.raises(ValueError, match="needs tiled images"):
        to_megatron_lm_llava(b, image_token_id=55, img_seq_len=4)
    with pytest.raises(ValueError, match="no <image> placeholder"):
        to_megatron_lm_llava(two_doc_batch(tail=0))


def test_npu_fusion_attention_kwargs():
    b = two_doc_batch(tail=3)
    kw = npu_fusion_attention_kwargs(b)
    assert kw["input_layout"] == "TND" and kw["sparse_mode"] == 3
    assert kw["actual_seq_qlen"] == kw["actual_seq_kvlen"] == [5, 12]
    assert all(type(x) is int for x in kw["actual_seq_qlen"])
    m = kw["atten_mask"]
    assert m.shape == (2048, 2048) and m.dtype == torch.bool
    assert not m[5, 5] and m[5, 6] and not m[6, 5] and int(m.sum()) == 2048 * 2047 // 2
    assert npu_fusion_attention_kwargs(two_doc_batch(tail=0))["atten_mask"] is m  # built once


def test_flash_attn_varlen_kwargs():
    kw = flash_attn_varlen_kwargs(two_doc_batch(tail=3))
    assert kw["cu_seqlens_q"].dtype == torch.int32 and kw["cu_seqlens_q"].tolist() == [0, 5, 12]
    assert kw["max_seqlen_q"] == kw["max_seqlen_k"] == 7


def test_bridge_shift_on_a_row_built_from_real_templates():
    """Two encoded conversations packed back to back: the one global shift never crosses a document."""
    tok = load_tokenizer(None)
    recs = [
        {"id": "a", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                      {"from": "gpt", "value": "A red car."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
    ]
    encs = [encode_conversation(recs[0], tok, "qwen2vl", [4]), encode_conversation(recs[1], tok, "qwen2vl", [])]
    ids = np.concatenate([e.input_ids for e in encs]).astype(np.int64)
    labels = np.concatenate([e.labels for e in encs]).astype(np.int64)
    lens = [len(e.input_ids) for e in encs]
    cu = np.r_[0, np.cumsum(lens)].astype(np.int32)
    T = int(cu[-1])
    pos = np.concatenate([mrope_position_ids(encs[0].input_ids, [[1, 4, 4]], 2, tok.vision_start_id, tok.image_pad_id),
                          mrope_position_ids(encs[1].input_ids, np.zeros((0, 3)), 2, tok.vision_start_id,
                                             tok.image_pad_id)], axis=1)
    b = {
        "input_ids": torch.from_numpy(ids)[None], "labels": torch.from_numpy(labels)[None],
        "attention_mask": torch.ones(1, T, dtype=torch.int64), "position_ids": torch.from_numpy(pos)[:, None],
        "text_position_ids": torch.from_numpy(np.concatenate([np.arange(n) for n in lens]))[None],
        "cu_seqlens": torch.from_numpy(cu), "cu_seqlens_padded": torch.from_numpy(cu), "max_seqlen": max(lens),
        "seqlens": torch.tensor(lens), "pixel_values": torch.zeros(16, 1176),
        "image_grid_thw": torch.tensor([[1, 4, 4]]),
    }
    out = to_megatron_bridge(b)
    assert out["labels"][0].tolist() == per_doc_shift(labels.tolist(), cu.tolist())
    # the predicted tokens are exactly each answer + <|im_end|>\n
    tgt = out["labels"][0][out["loss_mask"][0] > 0]
    assert tok.decode(tgt) == "A red car.<|im_end|>\nHi.<|im_end|>\n"
    assert to_mindspeed_seqpack(b)["seqlens"].tolist() == lens


class FakeLoader:
    """A resumable list of rows with PackedLoader's state interface."""

    def __init__(self, rows):
        self.rows, self.pos = rows, 0

    def __iter__(self):
        while self.pos < len(self.rows):
            self.pos += 1
            yield self.rows[self.pos - 1]

    def state_dict(self):
        return {"row": self.pos}

    def load_state_dict(self, s):
        self.pos = s["row"]


def test_adapted_loader_keeps_resume_hooks():
    from mmdata.loader.adapters import AdaptedLoader

    rows = [two_doc_batch(tail=t) for t in (0, 1, 2)]
    it = AdaptedLoader(FakeLoader(rows), to_megatron_bridge)
    assert it.is_distributed is True
    assert next(it)["total_tokens"] == 9
    state = it.save_state()
    assert next(it)["total_tokens"] == 10
    it.restore_state(state)
    assert next(it)["total_tokens"] == 10  # resumes right after the saved row
    assert it.state_dict() == {"row": 2}
    it.load_state_dict({"row": 0})
    assert [b["total_tokens"] for b in it] == [9, 10, 11]
    llava = AdaptedLoader(FakeLoader(rows[:1]), to_megatron_lm_llava, image_token_id=92, img_seq_len=1)
    with pytest.raises(ValueError, match="needs tiled images"):  # kwargs reach the adapter
        next(llava)


@pytest.mark.parametrize("adapter", [to_mindspeed_mcore, to_mindspeed_fsdp2, to_megatron_bridge])
def test_uint8_pixels_are_normalised_for_outside_stacks(adapter):
    from mmdata.loader.pixels import normalize_pixels

    b = two_doc_batch(tail=0)
    b["pixel_values"] = torch.randint(0, 256, (4, 1176), dtype=torch.uint8)
    out = adapter(b)
    pv = out["visual_inputs"].pixel_values if "visual_inputs" in out else out["pixel_values"]
    assert pv.dtype == torch.float32
    assert torch.equal(pv, normalize_pixels(b["pixel_values"]))
    assert not torch.equal(pv, b["pixel_values"].float())  # really normalised, not just cast
