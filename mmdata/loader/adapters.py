"""Thin adapters from the loader's canonical packed row (INTEGRATION.md s.6) to each training stack.

Pure functions, torch tensors in and out, no copies beyond what a key's dtype or shape needs.
megatron / torch_npu are imported only inside the functions that use them and are never required.
Where each consumer's contract comes from: ``../shared/INTEGRATION.md``; usage: ``docs/loader-text.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import torch

IGNORE = -100
NPU_MASK_SIZE = 2048  # torch_npu's compressed causal mask for sparse_mode=3 is a fixed 2048 x 2048 triangle


@dataclass
class VisualInputs:
    """Stand-in for Megatron-Bridge's visual-inputs object when megatron.bridge is not installed."""

    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None

    def as_model_kwargs(self) -> dict[str, torch.Tensor]:
        """The non-None fields, as model forward kwargs (Bridge's interface)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def normalized_for_model(self) -> dict[str, torch.Tensor]:
        return self.as_model_kwargs()


def _row(batch: dict) -> int:
    """Check the row is one packed sequence (B = 1) and return its length T."""
    ids = batch["input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"a packed row has input_ids of shape [1, T], got {list(ids.shape)}")
    return int(ids.shape[1])


def _tail(batch: dict, T: int) -> int:
    """Tail padding tokens at the end of the row (T minus the last logical document end)."""
    cu = batch["cu_seqlens"]
    return T - (int(cu[-1]) if cu.numel() else 0)


def _images(batch: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(pixel_values, image_grid_thw), both None for a text-only row.

    uint8 rows (``pixel_dtype="uint8"``) are normalised to float32 here, on the tensor's device, since no
    outside stack knows that convention; ``pixel_dtype="images"`` rows get their patches made here
    (:func:`mmdata.models.patches.pixel_values_from_images`). Move the row to the device first to keep
    the bandwidth win.
    """
    thw = batch.get("image_grid_thw")
    if thw is None or thw.numel() == 0:
        return None, None
    if "pixel_values" not in batch and "images" in batch:
        from mmdata.models.patches import pixel_values_from_images

        return pixel_values_from_images(batch["images"], thw), thw
    if "pixel_values" not in batch and "image_bytes" in batch:  # image_decode="device": decode where the ids are
        from mmdata.loader.devdecode import decode_shipped
        from mmdata.models.patches import pixel_values_from_images

        return pixel_values_from_images(decode_shipped(batch, batch["input_ids"].device), thw), thw
    pv = batch["pixel_values"]
    if pv.dtype == torch.uint8:
        from mmdata.loader.pixels import normalize_pixels

        pv = normalize_pixels(pv)
    return pv, thw


def to_mindspeed_mcore(batch: dict) -> dict:
    """MindSpeed-MM ``pretrain_vlm.py`` (Qwen2.5-VL on MCore): each key becomes a ``VLMModel.forward`` kwarg.

    Needs ``use_remove_padding: true`` + ``--use-flash-attn`` and micro-batch 1; the model derives the
    document boundaries from ``position_ids[0] == 0``, so the 3-D M-RoPE positions are required.
    """
    _row(batch)
    pv, thw = _images(batch)
    return {
        "input_ids": batch["input_ids"],
        "labels": batch["labels"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch["position_ids"],
        "pixel_values": pv,
        "image_grid_thw": thw,
    }


def to_mindspeed_seqpack(batch: dict) -> dict:
    """MindSpeed-MM SeqPack (``pretrain_transformers.py``, TND): ``seqlens`` + unpadded row, no positions.

    The model computes M-RoPE per document from ``seqlens``; it has no notion of tail padding, so a row
    with any raises ``ValueError``.
    """
    T = _row(batch)
    tail = _tail(batch, T)
    if tail:
        raise ValueError(f"SeqPack rows may not carry tail padding; this row has {tail} pad token(s) "
                         f"(pack without padding, or use the MCore / FSDP2 adapter)")
    pv, thw = _images(batch)
    return {
        "seqlens": batch["seqlens"].to(torch.int64),
        "input_ids": batch["input_ids"],
        "labels": batch["labels"],
        "attention_mask": torch.ones_like(batch["input_ids"]),
        "pixel_values": pv,
        "image_grid_thw": thw,
        "indices": torch.arange(T, dtype=torch.int64, device=batch["input_ids"].device),
    }


def to_mindspeed_fsdp2(batch: dict) -> dict:
    """MindSpeed-MM native FSDP2 trainer: ``cu_seqlens`` int64 ``[1, D+1]`` (its packing flag) + 3-D positions.

    ``cu_seqlens`` are the physical ends (tail padding folded into the last document), as its packer's
    ``[0, ..., total]``; the tail carries no loss, so per-sample losses are unchanged.
    """
    return {**to_mindspeed_mcore(batch), "cu_seqlens": batch["cu_seqlens_padded"].to(torch.int64).reshape(1, -1)}


def _bridge_visual_inputs(pixel_values, image_grid_thw):
    try:  # the class Bridge's Qwen2/2.5-VL collate builds, else its generic one
        from megatron.bridge.training.utils.visual_inputs import Qwen2_5_VLVisualInputs as cls
    except Exception:
        try:
            from megatron.bridge.training.utils.visual_inputs import GenericVisualInputs as cls
        except Exception:
            cls = VisualInputs
    return cls(pixel_values=pixel_values, image_grid_thw=image_grid_thw)


def to_megatron_bridge(batch: dict) -> dict:
    """Megatron-Bridge ``vlm_step``: pre-shifted labels + float ``loss_mask``, THD ``cu_seqlens_q/kv``.

    ``labels = cat(labels[:, 1:], -100)``: since every document's first label is -100, one shift of the
    row equals a shift per document. ``position_ids`` are the 1-D text positions (the model recomputes
    M-RoPE per document); ``*_padded`` keys appear only when the row has tail padding.
    """
    T = _row(batch)
    labels = batch["labels"]
    shifted = torch.cat([labels[:, 1:], labels.new_full((1, 1), IGNORE)], dim=1)
    cu = batch["cu_seqlens"].to(torch.int32)
    max_len = torch.tensor(int(batch["max_seqlen"]), dtype=torch.int32)
    pv, thw = _images(batch)
    out = {
        "input_ids": batch["input_ids"],
        "labels": shifted,
        "loss_mask": (shifted != IGNORE).to(torch.float32),
        "position_ids": batch["text_position_ids"],
        "attention_mask": None,
        "visual_inputs": _bridge_visual_inputs(pv, thw),
        "cu_seqlens_q": cu,
        "cu_seqlens_kv": cu,
        "max_seqlen_q": max_len,
        "max_seqlen_kv": max_len,
        "total_tokens": T,
    }
    if _tail(batch, T) or not torch.equal(batch["cu_seqlens"], batch["cu_seqlens_padded"]):
        cup = batch["cu_seqlens_padded"].to(torch.int32)
        out["cu_seqlens_q_padded"] = cup
        out["cu_seqlens_kv_padded"] = cup
    return out


def to_megatron_lm_llava(batch: dict, image_token_id: int | None = None, img_seq_len: int | None = None) -> dict:
    """Megatron-LM ``examples/multimodal`` (LLaVA) packed batch: tokens, labels ``[1, T+1]``, ``cu_lengths``.

    The model expands each ``<image>`` placeholder (one token per image, template ``image_tokens=[1]``)
    into ``num_tiles * img_seq_len`` embeddings, so ``cu_lengths`` / ``max_lengths`` are computed in that
    expanded space; rows with images need ``imgs`` [tiles, 3, H, W] and ``num_tiles`` [N] in the batch
    (the loader's LLaVA mode), plus ``image_token_id`` and ``img_seq_len``. Text-only rows get the
    ``[[0]]`` dummies Megatron-LM expects.
    """
    _row(batch)  # checks B == 1
    ids = batch["input_ids"]
    labels = torch.cat([batch["labels"], batch["labels"].new_full((1, 1), IGNORE)], dim=1)
    cup = batch["cu_seqlens_padded"].to(torch.int64)
    doc_len = cup[1:] - cup[:-1]
    n_img = 0 if image_token_id is None else int((ids == image_token_id).sum())
    dummy_f = torch.zeros((1, 1), dtype=torch.float32)
    dummy_i = torch.zeros((1, 1), dtype=torch.int32)
    if n_img == 0:
        if batch.get("image_grid_thw") is not None and batch["image_grid_thw"].numel():
            raise ValueError("row has images but no <image> placeholder was found: pass image_token_id")
        imgs, num_tiles = dummy_f, dummy_i
    else:
        if "imgs" not in batch or "num_tiles" not in batch or img_seq_len is None:
            raise ValueError("Megatron-LM LLaVA needs tiled images: the batch must carry 'imgs' and 'num_tiles' "
                             "(loader LLaVA mode) and img_seq_len must be given")
        imgs, num_tiles = batch["imgs"].to(torch.float32), batch["num_tiles"].to(torch.int32).reshape(-1)
        if num_tiles.numel() != n_img:
            raise ValueError(f"{n_img} <image> placeholders but {num_tiles.numel()} num_tiles entries")
        where = torch.nonzero(ids[0] == image_token_id).reshape(-1)
        doc_of = torch.searchsorted(cup[1:], where, right=True)
        extra = num_tiles.to(torch.int64) * int(img_seq_len) - 1
        doc_len = doc_len + torch.zeros_like(doc_len).index_add_(0, doc_of, extra)
    cu_lengths = torch.cat([doc_len.new_zeros(1), torch.cumsum(doc_len, 0)]).to(torch.int32).reshape(1, -1)
    return {
        "tokens": ids,
        "labels": labels,
        "imgs": imgs,
        "num_tiles": num_tiles,
        "cu_lengths": cu_lengths,
        "max_lengths": (doc_len.max() if doc_len.numel() else torch.tensor(0)).to(torch.int32).reshape(1),
    }


@lru_cache(maxsize=8)
def _npu_causal_mask(device: str) -> torch.Tensor:
    return torch.triu(torch.ones((NPU_MASK_SIZE, NPU_MASK_SIZE), dtype=torch.bool, device=device), diagonal=1)


def npu_fusion_attention_kwargs(batch: dict, device: str | torch.device | None = None) -> dict[str, Any]:
    """Keyword arguments of ``torch_npu.npu_fusion_attention`` for this row in TND layout.

    ``actual_seq_qlen = actual_seq_kvlen`` = the cumulative document ends (host ints, last = T),
    ``sparse_mode=3`` with the compressed 2048 x 2048 bool upper-triangle causal mask, built once per
    device. Add ``head_num`` and the q/k/v tensors yourself.
    """
    ends = batch["cu_seqlens_padded"][1:].tolist()
    dev = str(device if device is not None else batch["input_ids"].device)
    return {
        "input_layout": "TND",
        "actual_seq_qlen": ends,
        "actual_seq_kvlen": ends,
        "sparse_mode": 3,
        "atten_mask": _npu_causal_mask(dev),
    }


def flash_attn_varlen_kwargs(batch: dict) -> dict[str, Any]:
    """``flash_attn_varlen_func`` / Transformer Engine THD arguments: int32 ``cu_seqlens`` + ``max_seqlen``."""
    cu = batch["cu_seqlens_padded"].to(torch.int32)
    m = int(batch["max_seqlen"])
    return {"cu_seqlens_q": cu, "cu_seqlens_k": cu, "max_seqlen_q": m, "max_seqlen_k": m}


class AdaptedLoader:
    """Iterator over ``fn(row, **kwargs)`` for each packed row of ``loader``, keeping its resume hooks.

    What the Megatron-style providers return: ``is_distributed = True`` (every rank builds its own),
    ``__next__`` for ``RerunDataIterator``, ``save_state``/``restore_state`` (Megatron-LM, Bridge) and
    ``state_dict``/``load_state_dict`` (MindSpeed-MM FSDP2) delegated to the loader.
    """

    is_distributed = True

    def __init__(self, loader, fn, **kwargs):
        self.loader, self.fn, self.kwargs = loader, fn, kwargs
        self._it = None

    def __iter__(self):
        self._it = iter(self.loader)
        return self

    def __next__(self):
        if self._it is None:
            self._it = iter(self.loader)
        return self.fn(next(self._it), **self.kwargs)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._it = None

    save_state = state_dict
    restore_state = load_state_dict
