"""Tiny random Qwen2-VL / Qwen2.5-VL folders saved by transformers, over mmdata's shipped tokenizer (so the
loader's batches feed them), for the parity tests of mmtrain's loader, export and generate."""

from __future__ import annotations

from pathlib import Path

import torch

from mmdata.loader import load_tokenizer
from mmtrain.hf import write_tokenizer_files


def tiny_config(family: str, tie: bool = False, dtype: torch.dtype = torch.float32):
    """A 2-layer config of `family` (qwen2_vl | qwen2_5_vl) whose special ids are the shipped tokenizer's."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    tok = load_tokenizer()
    text = dict(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=tie, initializer_range=0.1,
                bos_token_id=tok.endoftext_id, eos_token_id=tok.im_end_id, pad_token_id=tok.pad_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    ids = dict(image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
               vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id,
               tie_word_embeddings=tie)
    if family == "qwen2_vl":
        vis = dict(initializer_range=0.1, depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, spatial_merge_size=2)
        cfg = Qwen2VLConfig(text_config=text, vision_config=vis, **ids)
    else:
        vis = dict(initializer_range=0.1, depth=3, hidden_size=32, intermediate_size=48, out_hidden_size=64, num_heads=2,
                   window_size=56, fullatt_block_indexes=[1], spatial_merge_size=2)
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vis, **ids)
    cfg.dtype = dtype
    return cfg


def save_tiny(out: Path, family: str = "qwen2_vl", tie: bool = False, seed: int = 0, dtype=torch.float32,
              max_shard_size: str | None = None) -> Path:
    """save_pretrained of a random tiny model plus the shipped tokenizer, a chat template and the processor."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    cls = Qwen2VLForConditionalGeneration if family == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(tiny_config(family, tie)).to(dtype)
    with torch.no_grad():  # transformers initialises norms to 1 and biases to 0: make every tensor matter
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kw)
    write_tokenizer_files(out)
    Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280).save_pretrained(out)
    return out

