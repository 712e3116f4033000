"""Model FLOPs of one packed row (forward + backward = 3x forward), for the MFU estimate.

Counts the matmuls of the real documents only (tail padding is wasted work, not model FLOPs), causal
attention as half of the square per document, the LM head only at loss positions (the model computes
logits only there), and the ViT per image frame. Activation recompute is not counted (MFU, not HFU).
"""

from __future__ import annotations

from mmtrain.model import ModelConfig


def row_flops(cfg: ModelConfig, doc_lens: list[int], n_loss_tokens: int, frame_patches: list[int]) -> float:
    """Training FLOPs of one row: documents of `doc_lens` tokens, ViT frames of `frame_patches` patches."""
    t, v = cfg.text, cfg.vision
    hd = t.head_dim
    tokens = sum(doc_lens)
    lin = 2 * (t.hidden * t.heads * hd + 2 * t.hidden * t.kv_heads * hd + t.heads * hd * t.hidden + 3 * t.hidden * t.ffn)
    text = t.layers * (lin * tokens + 2 * t.heads * hd * sum(n * n for n in doc_lens))  # QK^T + AV, causal half
    head = 2 * t.hidden * cfg.vocab_size * n_loss_tokens
    patches = sum(frame_patches)
    vit_mlp = (3 if v.mlp == "swiglu" else 2) * v.dim * v.mlp_dim  # Qwen2.5-VL: gate, up, down
    vit_lin = 2 * (v.dim * 3 * v.dim + v.dim * v.dim + vit_mlp)
    vit = v.depth * (vit_lin * patches + 4 * v.dim * sum(n * n for n in frame_patches))
    m = v.dim * v.merge_size**2
    merger = 2 * (m * m + m * t.hidden) * patches // v.merge_size**2 + 2 * v.patch_dim * v.dim * patches
    return 3.0 * (text + head + vit + merger)
