"""A vision-language model shaped like Qwen2-VL, over packed THD rows.

ViT over the flat [P, 1176] patches with per-image variable-length attention and 2-D rotary positions,
a 2x2 patch merger + MLP projector, and a decoder LM (RMSNorm, SwiGLU, M-RoPE, grouped-query attention)
with per-document causal attention given by `cu_seqlens`. Image features replace the `<|image_pad|>`
embeddings in order. `model(batch) -> (loss_sum, n_loss_tokens)`; the recipe divides by the global count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmtrain.accel import Accel, get_accel

IGNORE_INDEX = -100
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    depth: int
    dim: int
    heads: int
    mlp_dim: int
    patch_dim: int = 1176  # 3 channels x 2 frames x 14 x 14
    merge_size: int = 2
    eps: float = 1e-6
    theta: float = 10000.0
    # Qwen2-VL: LayerNorm + QuickGELU fc1/fc2 blocks, LayerNorm in the merger. Qwen2.5-VL: RMSNorm + SwiGLU
    # (gate/up/down with bias) blocks and merger, window attention except in `fullatt_blocks`.
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "quick_gelu"  # quick_gelu (fc1/fc2) | swiglu (gate_proj/up_proj/down_proj)
    window_size: int = 0  # pixels per window side (Qwen2.5-VL: 112); 0 = every block attends per frame
    fullatt_blocks: tuple[int, ...] = ()
    patch_size: int = 14


@dataclass
class TextConfig:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    mrope_section: tuple[int, int, int]  # split of head_dim/2 into (temporal, height, width)
    rope_theta: float = 1_000_000.0
    eps: float = 1e-6
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass
class ModelConfig:
    name: str
    vision: VisionConfig
    text: TextConfig
    vocab_size: int
    image_token_id: int
    family: str = "qwen2_vl"  # qwen2_vl | qwen2_5_vl (the Hugging Face model_type)
    hf_config: dict | None = None  # the source folder's config.json, when loaded from one (export writes it back)

    def to_dict(self) -> dict:
        return asdict(self)


# Qwen2-VL-like shapes. tiny: seconds per step on a laptop CPU; 100m: ~100M parameters besides the
# embeddings; 0.5b: Qwen2-0.5B decoder + a 12-layer ViT; 1b: Qwen2-0.5B decoder + Qwen2-VL's 675M ViT;
# 2b: Qwen2-VL-2B.
MODEL_SHAPES: dict[str, tuple[VisionConfig, TextConfig]] = {
    "tiny": (VisionConfig(depth=2, dim=64, heads=4, mlp_dim=256),
             TextConfig(layers=2, hidden=128, heads=4, kv_heads=2, ffn=384, mrope_section=(4, 6, 6))),
    "100m": (VisionConfig(depth=6, dim=512, heads=8, mlp_dim=2048),
             TextConfig(layers=12, hidden=768, heads=12, kv_heads=4, ffn=2048, mrope_section=(8, 12, 12))),
    "0.5b": (VisionConfig(depth=12, dim=768, heads=12, mlp_dim=3072),
             TextConfig(layers=24, hidden=896, heads=14, kv_heads=2, ffn=4864, mrope_section=(8, 12, 12))),
    "1b": (VisionConfig(depth=32, dim=1280, heads=16, mlp_dim=5120),
           TextConfig(layers=24, hidden=896, heads=14, kv_heads=2, ffn=4864, mrope_section=(8, 12, 12))),
    "2b": (VisionConfig(depth=32, dim=1280, heads=16, mlp_dim=5120),
           TextConfig(layers=28, hidden=1536, heads=12, kv_heads=2, ffn=8960, mrope_section=(16, 24, 24))),
}


def model_config(name: str, vocab_size: int, image_token_id: int) -> ModelConfig:
    """The named shape with the tokenizer's vocabulary size and `<|image_pad|>` id."""
    if name not in MODEL_SHAPES:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(MODEL_SHAPES)}")
    v, t = MODEL_SHAPES[name]
    return ModelConfig(name=name, vision=v, text=t, vocab_size=vocab_size, image_token_id=image_token_id)


def rope_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """RoPE inverse frequencies over `dim` rotated channels (float32)."""
    return 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D]; cos/sin [T, 1, D] in fp32; result in x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, accel: Accel):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.accel = accel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.accel.rms_norm(x, self.weight, self.eps)


# ------------------------------------------------------------------------------------------ vision


def vision_cu_seqlens(grid_thw: torch.Tensor) -> list[int]:
    """Per-frame segments of the ViT: each of an image's t frames of h*w patches attends to itself."""
    lens = []
    for t, h, w in grid_thw.tolist():
        lens += [h * w] * t
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return cu


def vision_rot_ids(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(h, w) patch coordinates [P, 2] in the merge-window row order of the HF processor."""
    out = []
    for t, h, w in grid_thw.tolist():
        hp = torch.arange(h).unsqueeze(1).expand(-1, w)
        wp = torch.arange(w).unsqueeze(0).expand(h, -1)
        hp = hp.reshape(h // merge, merge, w // merge, merge).permute(0, 2, 1, 3).flatten()
        wp = wp.reshape(h // merge, merge, w // merge, merge).permute(0, 2, 1, 3).flatten()
        out.append(torch.stack([hp, wp], dim=-1).repeat(t, 1))
    return torch.cat(out, 0)


def vision_norm(cfg: VisionConfig, accel: Accel) -> nn.Module:
    """The ViT's norm: LayerNorm (Qwen2-VL) or RMSNorm (Qwen2.5-VL), eps 1e-6 in both."""
    return RMSNorm(cfg.dim, cfg.eps, accel) if cfg.norm == "rmsnorm" else nn.LayerNorm(cfg.dim, eps=cfg.eps)


def window_index(grid_thw: torch.Tensor, merge: int, window: int) -> tuple[torch.Tensor, list[int]]:
    """Qwen2.5-VL's windows: the order of the merge units (2x2 patches) that groups each frame's units into
    `window`-unit squares (row-major windows, row-major inside), and the patch bounds of the windows."""
    order, cu, base = [], [0], 0
    for t, h, w in grid_thw.tolist():
        lh, lw = h // merge, w // merge
        units = torch.arange(t * lh * lw).view(t, lh, lw) + base
        for f in range(t):
            for y in range(0, lh, window):
                for x in range(0, lw, window):
                    blk = units[f, y:y + window, x:x + window].flatten()
                    order.append(blk)
                    cu.append(cu[-1] + blk.numel() * merge * merge)
        base += t * lh * lw
    return torch.cat(order), cu


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, accel: Accel):
        super().__init__()
        self.heads = cfg.heads
        self.accel = accel
        self.swiglu = cfg.mlp == "swiglu"
        self.norm1 = vision_norm(cfg, accel)
        self.norm2 = vision_norm(cfg, accel)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=True)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=True)
        if self.swiglu:
            self.gate_proj = nn.Linear(cfg.dim, cfg.mlp_dim)
            self.up_proj = nn.Linear(cfg.dim, cfg.mlp_dim)
            self.down_proj = nn.Linear(cfg.mlp_dim, cfg.dim)
        else:
            self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
            self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)

    def forward(self, x, cos, sin, cu: list[int], max_len: int):
        P = x.shape[0]
        q, k, v = self.qkv(self.norm1(x)).view(P, 3, self.heads, -1).unbind(1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        a = self.accel.varlen_attention(q, k, v, cu, max_len, causal=False)
        x = x + self.proj(a.reshape(P, -1))
        h = self.norm2(x)
        if self.swiglu:
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        h = self.fc1(h)
        return x + self.fc2(h * torch.sigmoid(1.702 * h))  # QuickGELU, as Qwen2-VL's ViT


def _max_len(cu: list[int]) -> int:
    return max(b - a for a, b in zip(cu[:-1], cu[1:]))


class VisionTower(nn.Module):
    """Qwen2-VL / Qwen2.5-VL ViT: patch embedding, 2-D RoPE blocks attending per frame (or per window),
    2x2 merger -> LM width."""

    def __init__(self, cfg: VisionConfig, out_dim: int, accel: Accel):
        super().__init__()
        self.cfg = cfg
        self.accel = accel
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.dim, bias=False)  # == Conv3d(k=stride=(2,14,14))
        self.blocks = nn.ModuleList(VisionBlock(cfg, accel) for _ in range(cfg.depth))
        m = cfg.dim * cfg.merge_size**2
        self.merger_norm = vision_norm(cfg, accel)
        self.merger_fc1 = nn.Linear(m, m)
        self.merger_fc2 = nn.Linear(m, out_dim)
        self.register_buffer("inv_freq", rope_inv_freq(cfg.dim // cfg.heads // 2, cfg.theta), persistent=False)
        self.recompute_layers: set[int] = set()

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 patches -> CLIP-normalised float32 on their device, with the loader's own arithmetic
        (`mmdata.loader.normalize_pixels`: the same values as its float32 rows); float input is used as is."""
        if pixel_values.dtype != torch.uint8:
            return pixel_values
        from mmdata.loader import normalize_pixels

        return normalize_pixels(pixel_values)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.normalize(pixel_values).to(self.patch_embed.weight.dtype))
        ids = vision_rot_ids(grid_thw, self.cfg.merge_size).to(x.device)
        freqs = (ids.unsqueeze(-1).float() * self.inv_freq).flatten(1)  # [P, head_dim/2]
        emb = torch.cat([freqs, freqs], -1)
        cu = cu_win = vision_cu_seqlens(grid_thw)
        unit = self.cfg.merge_size**2
        order = None
        if self.cfg.window_size:
            order, cu_win = window_index(grid_thw, self.cfg.merge_size,
                                         self.cfg.window_size // self.cfg.merge_size // self.cfg.patch_size)
            order = order.to(x.device)
            x = x.view(-1, unit, x.shape[-1])[order].flatten(0, 1)
            emb = emb.view(-1, unit, emb.shape[-1])[order].flatten(0, 1)
        cos, sin = emb.unsqueeze(1).cos(), emb.unsqueeze(1).sin()
        full, win = (cu, _max_len(cu)), (cu_win, _max_len(cu_win))
        for i, blk in enumerate(self.blocks):
            seg, max_len = full if (order is None or i in self.cfg.fullatt_blocks) else win
            if i in self.recompute_layers and self.training:
                x = checkpoint(blk, x, cos, sin, seg, max_len, use_reentrant=False)
            else:
                x = blk(x, cos, sin, seg, max_len)
        x = self.merger_norm(x).view(-1, self.cfg.dim * unit)
        x = self.merger_fc2(F.gelu(self.merger_fc1(x)))
        return x if order is None else x[torch.argsort(order)]


# ------------------------------------------------------------------------------------------- text


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, accel: Accel):
        super().__init__()
        self.cfg = cfg
        self.accel = accel
        hd = cfg.head_dim
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.eps, accel)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.eps, accel)
        self.q_proj = nn.Linear(cfg.hidden, cfg.heads * hd, bias=True)
        self.k_proj = nn.Linear(cfg.hidden, cfg.kv_heads * hd, bias=True)
        self.v_proj = nn.Linear(cfg.hidden, cfg.kv_heads * hd, bias=True)
        self.o_proj = nn.Linear(cfg.heads * hd, cfg.hidden, bias=False)
        self.gate_up_proj = nn.Linear(cfg.hidden, 2 * cfg.ffn, bias=False)  # [gate | up], one GEMM
        self.down_proj = nn.Linear(cfg.ffn, cfg.hidden, bias=False)

    def forward(self, x, cos, sin, cu: list[int], max_len: int):
        T, hd = x.shape[0], self.cfg.head_dim
        h = self.input_layernorm(x)
        q = apply_rope(self.q_proj(h).view(T, self.cfg.heads, hd), cos, sin)
        k = apply_rope(self.k_proj(h).view(T, self.cfg.kv_heads, hd), cos, sin)
        v = self.v_proj(h).view(T, self.cfg.kv_heads, hd)
        a = self.accel.varlen_attention(q, k, v, cu, max_len, causal=True)
        x = x + self.o_proj(a.reshape(T, -1))
        return x + self.down_proj(self.accel.swiglu(self.gate_up_proj(self.post_attention_layernorm(x))))

    def forward_cached(self, x, cos, sin, kv: dict) -> torch.Tensor:
        """One sequence continuing the keys/values in `kv` (updated in place): a prefill or a decode step."""
        T, hd = x.shape[0], self.cfg.head_dim
        h = self.input_layernorm(x)
        q = apply_rope(self.q_proj(h).view(T, self.cfg.heads, hd), cos, sin)
        k = apply_rope(self.k_proj(h).view(T, self.cfg.kv_heads, hd), cos, sin)
        v = self.v_proj(h).view(T, self.cfg.kv_heads, hd)
        if "k" in kv:
            k, v = torch.cat([kv["k"], k]), torch.cat([kv["v"], v])
        kv["k"], kv["v"] = k, v
        past = k.shape[0] - T
        rep = self.cfg.heads // self.cfg.kv_heads
        qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        kh, vh = kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1)
        mask = None if T == 1 else torch.ones(T, k.shape[0], dtype=torch.bool, device=x.device).tril(past)
        a = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)[0].transpose(0, 1)
        x = x + self.o_proj(a.reshape(T, -1))
        return x + self.down_proj(self.accel.swiglu(self.gate_up_proj(self.post_attention_layernorm(x))))


def mrope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, section: tuple[int, int, int]):
    """M-RoPE: [3, T] positions -> cos/sin [T, 1, head_dim], the i-th section of frequencies from row i."""
    freqs = position_ids.float().unsqueeze(-1) * inv_freq  # [3, T, hd/2]
    chunks = freqs.split(list(section), dim=-1)
    f = torch.cat([c[i] for i, c in enumerate(chunks)], dim=-1)
    emb = torch.cat([f, f], dim=-1).unsqueeze(1)
    return emb.cos(), emb.sin()


class VLModel(nn.Module):
    """Qwen2-VL-shaped model over one packed THD row (B = 1); see the module docstring."""

    def __init__(self, cfg: ModelConfig, accel: Accel):
        super().__init__()
        self.cfg = cfg
        self.accel = accel
        t = cfg.text
        if sum(t.mrope_section) * 2 != t.head_dim:
            raise ValueError(f"mrope_section {t.mrope_section} must sum to head_dim/2 = {t.head_dim // 2}")
        self.visual = VisionTower(cfg.vision, t.hidden, accel)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, t.hidden)
        self.layers = nn.ModuleList(DecoderLayer(t, accel) for _ in range(t.layers))
        self.norm = RMSNorm(t.hidden, t.eps, accel)
        self.lm_head = nn.Linear(t.hidden, cfg.vocab_size, bias=False)
        if t.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(t.head_dim, t.rope_theta), persistent=False)
        self.recompute_groups: list[tuple[int, int]] = []  # [start, end) runs of layers recomputed as one unit
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def set_recompute(self, method: str | None, num_layers: int) -> None:
        """Megatron's full recompute: 'block' = first N layers each; 'uniform' = groups of N layers."""
        self.recompute_groups = []
        self.visual.recompute_layers = set()
        if not method or num_layers <= 0:
            return
        n = len(self.layers)
        if method == "block":
            self.recompute_groups = [(i, i + 1) for i in range(min(num_layers, n))]
            self.visual.recompute_layers = set(range(min(num_layers, len(self.visual.blocks))))
        elif method == "uniform":
            self.recompute_groups = [(i, min(i + num_layers, n)) for i in range(0, n, num_layers)]
            self.visual.recompute_layers = set(range(len(self.visual.blocks)))
        else:
            raise ValueError(f"recompute method must be 'block' or 'uniform', got {method!r}")

    def _run_layers(self, start: int, end: int, x, cos, sin, cu, max_len):
        for layer in self.layers[start:end]:
            x = layer(x, cos, sin, cu, max_len)
        return x

    def embed(self, batch: dict) -> torch.Tensor:
        """Token embeddings with the ViT's features written at the `<|image_pad|>` places, in order."""
        ids = batch["input_ids"][0]
        x = self.embed_tokens(ids)
        pix = batch.get("pixel_values")
        if pix is not None and pix.numel() > 0:
            img = self.visual(pix, batch["image_grid_thw"])
            mask = ids == self.cfg.image_token_id
            n = int(mask.sum())
            if n != img.shape[0]:
                raise ValueError(f"{n} image placeholder tokens but the images give {img.shape[0]} features")
            x = x.masked_scatter(mask.unsqueeze(-1).expand_as(x), img.to(x.dtype))
        elif self.training:
            # Text-only micro-batch: touch the ViT with a dummy image at zero weight so that every
            # parameter gets a gradient (DDP and FSDP need it) without changing the result.
            dev = self.embed_tokens.weight.device
            grid = torch.tensor([[1, 2, 2]], device=dev)
            dummy = self.visual(torch.zeros(4, self.cfg.vision.patch_dim, device=dev), grid)
            x = x + 0.0 * dummy.sum().to(x.dtype)
        return x

    def hidden_states(self, batch: dict) -> torch.Tensor:
        """Final normed hidden states [T, hidden] of one packed row."""
        x = self.embed(batch)
        T = x.shape[0]
        cu = segment_bounds(batch, T)
        max_len = max(b - a for a, b in zip(cu[:-1], cu[1:]))
        pos = batch["position_ids"]
        pos = pos[:, 0] if pos.dim() == 3 else pos.expand(3, -1)
        cos, sin = mrope_cos_sin(pos.to(x.device), self.inv_freq, self.cfg.text.mrope_section)
        i = 0
        for start, end in self.recompute_groups if self.training else []:
            x = self._run_layers(i, start, x, cos, sin, cu, max_len)
            x = checkpoint(self._run_layers, start, end, x, cos, sin, cu, max_len, use_reentrant=False)
            i = end
        x = self._run_layers(i, len(self.layers), x, cos, sin, cu, max_len)
        return self.norm(x)

    def logits(self, batch: dict) -> torch.Tensor:
        """float32 logits [T, vocab] of every position of one packed row (parity tests, evaluation)."""
        return self.lm_head(self.hidden_states(batch)).float()

    def forward_cached(self, x: torch.Tensor, position_ids: torch.Tensor, caches: list[dict]) -> torch.Tensor:
        """Decoder over embeddings `x [T, hidden]` of one sequence at M-RoPE `position_ids [3, T]`, continuing the
        per-layer key/value `caches`; float32 logits [vocab] of the last position (greedy generation)."""
        cos, sin = mrope_cos_sin(position_ids.to(x.device), self.inv_freq, self.cfg.text.mrope_section)
        for layer, kv in zip(self.layers, caches):
            x = layer.forward_cached(x, cos, sin, kv)
        return self.lm_head(self.norm(x[-1:]))[0].float()

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token loss over the row's loss tokens (labels unshifted) and their count."""
        h = self.hidden_states(batch)
        target = batch["labels"][0, 1:]
        sel = (target != IGNORE_INDEX).nonzero().squeeze(1)
        logits = self.lm_head(h[:-1].index_select(0, sel)).float()  # only where a loss is taken
        loss_sum = F.cross_entropy(logits, target.index_select(0, sel), reduction="sum")
        return loss_sum, torch.tensor(sel.numel(), device=h.device)

    def token_losses(self, batch: dict) -> torch.Tensor:
        """Per-position loss [T] (position t predicts token t; 0 where labels[t] is ignored)."""
        h = self.hidden_states(batch)
        labels = batch["labels"][0]
        logits = self.lm_head(h[:-1]).float()
        out = F.cross_entropy(logits, labels[1:], ignore_index=IGNORE_INDEX, reduction="none")
        return torch.cat([out.new_zeros(1), out])


def segment_bounds(batch: dict, total: int) -> list[int]:
    """Attention segments of the row as host ints: `cu_seqlens_padded` (tail folded into the last
    document) when given, else `cu_seqlens`, extended to cover any tail padding."""
    cu = batch.get("cu_seqlens_padded")
    if cu is None:
        cu = batch["cu_seqlens"]
    b = cu.tolist() if isinstance(cu, torch.Tensor) else list(cu)
    if b[-1] < total:
        b.append(total)
    return b


def num_params(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Unique parameter count (tied weights once); optionally without the token embedding / LM head."""
    seen, n = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if exclude_embeddings and ("embed_tokens" in name or "lm_head" in name):
            continue
        n += p.numel()
    return n


def empty_model(cfg: ModelConfig, accel: Accel, device: torch.device | str | None = None) -> VLModel:
    """The model with uninitialised parameters on `device` (no random init: weights are loaded next), tied
    embeddings tied and the RoPE buffers computed."""
    with torch.device("meta"):
        model = VLModel(cfg, accel)
    model.to_empty(device=device or accel.device)
    if cfg.text.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    with torch.no_grad():
        model.inv_freq.copy_(rope_inv_freq(cfg.text.head_dim, cfg.text.rope_theta))
        v = cfg.vision
        model.visual.inv_freq.copy_(rope_inv_freq(v.dim // v.heads // 2, v.theta))
    return model


def build_model(name: str, vocab_size: int, image_token_id: int, accel: Accel | None = None,
                device: torch.device | str | None = None) -> VLModel:
    """Build a named config (tiny, 100m, 0.5b, 1b, 2b) for a tokenizer's vocabulary."""
    accel = accel or get_accel("cpu")
    cfg = model_config(name, vocab_size, image_token_id)
    with torch.device(device or accel.device):
        return VLModel(cfg, accel)
