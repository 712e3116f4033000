"""One small accelerator interface: device, distributed backend, varlen attention and fused ops.

`get_accel("auto"|"npu"|"cuda"|"cpu", ...)` returns an `Accel`; the model calls only its
`varlen_attention`, `rms_norm` and `swiglu`. torch_npu is imported on demand, and its absence (or a
missing CANN) never breaks CPU or CUDA.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import torch
import torch.nn.functional as F

DEVICES = ("auto", "npu", "cuda", "cpu")
BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
ATTN_IMPLS = ("npu_fusion", "flash_attn", "torch_varlen", "sdpa_doc", "sdpa_mask")

# Dense bf16 peak (FLOP/s) by device-name fragment, for the MFU estimate. Sources: vendor data sheets.
_PEAK_BF16 = (
    ("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("H20", 148e12), ("A100", 312e12),
    ("A800", 312e12), ("L40", 181e12), ("A10", 125e12), ("4090", 165e12), ("V100", 125e12),
    ("910B1", 414e12), ("910B2", 376e12), ("910B3", 313e12), ("910B4", 280e12), ("910", 313e12),
)


def try_import_torch_npu():
    """Import torch_npu and return it when an NPU is usable; None otherwise (never raises)."""
    try:
        import torch_npu
    except (ImportError, OSError, RuntimeError):
        return None
    try:
        if not (hasattr(torch, "npu") and torch.npu.is_available() and torch.npu.device_count() > 0):
            return None
    except Exception:  # a broken CANN shows up here, in any exception type
        return None
    return torch_npu


def detect_device(requested: str = "auto") -> str:
    """Resolve --device: npu when torch_npu sees one, else cuda, else cpu. Raises ValueError if unusable."""
    if requested not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    if requested in ("auto", "npu") and try_import_torch_npu() is not None:
        return "npu"
    if requested == "npu":
        raise ValueError("--device npu: torch_npu is not installed or sees no NPU (is CANN set up?)")
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise ValueError("--device cuda: no CUDA device is visible")
    return "cpu"


# ---------------------------------------------------------------------------------------------
# Varlen attention kernels. All take q [T, Hq, D], k/v [T, Hkv, D] (Hq % Hkv == 0) and cu_seqlens
# int32 [S+1] (leading 0, last = T) and return [T, Hq, D]. Segments never attend to each other.
# ---------------------------------------------------------------------------------------------


def _bounds(cu_seqlens: torch.Tensor | list[int]) -> list[int]:
    return cu_seqlens if isinstance(cu_seqlens, list) else cu_seqlens.tolist()


def sdpa_per_document(q, k, v, cu_seqlens, max_seqlen: int, causal: bool) -> torch.Tensor:
    """Exact reference: one SDPA call per segment (runs everywhere, with backward)."""
    b = _bounds(cu_seqlens)
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for s, e in zip(b[:-1], b[1:]):
        if e <= s:
            continue
        qs, ks, vs = (x[s:e].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, enable_gqa=gqa)
        outs.append(o.squeeze(0).transpose(0, 1))
    return torch.cat(outs, 0) if len(outs) != 1 else outs[0]


def block_diagonal_mask(cu_seqlens, total: int, causal: bool, device=None) -> torch.Tensor:
    """Bool [T, T] mask, True where attention is allowed: same segment (and key <= query if causal)."""
    b = torch.as_tensor(_bounds(cu_seqlens), device=device)
    seg = torch.bucketize(torch.arange(total, device=device), b[1:], right=True)
    mask = seg[:, None] == seg[None, :]
    if causal:
        mask &= torch.ones(total, total, dtype=torch.bool, device=device).tril()
    return mask


def sdpa_block_mask(q, k, v, cu_seqlens, max_seqlen: int, causal: bool) -> torch.Tensor:
    """One SDPA call over the whole row with a block-diagonal (causal) mask; O(T^2) memory."""
    mask = block_diagonal_mask(cu_seqlens, q.shape[0], causal, q.device)
    qs, ks, vs = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
    return o.squeeze(0).transpose(0, 1)


def _half(fn):
    """Fused kernels take only fp16/bf16: run fp32 inputs in bf16 and return the caller's dtype."""
    def wrapped(q, k, v, cu_seqlens, max_seqlen: int, causal: bool) -> torch.Tensor:
        dt = q.dtype
        if dt in (torch.float16, torch.bfloat16):
            return fn(q, k, v, cu_seqlens, max_seqlen, causal)
        b = torch.bfloat16
        return fn(q.to(b), k.to(b), v.to(b), cu_seqlens, max_seqlen, causal).to(dt)

    wrapped.__doc__ = fn.__doc__
    return wrapped


@_half
def flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen: int, causal: bool) -> torch.Tensor:
    """CUDA: flash-attn's varlen kernel (GQA native)."""
    from flash_attn import flash_attn_varlen_func

    cu = torch.as_tensor(cu_seqlens, dtype=torch.int32, device=q.device)
    return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, causal=causal)


@_half
def torch_varlen(q, k, v, cu_seqlens, max_seqlen: int, causal: bool) -> torch.Tensor:
    """CUDA: torch.nn.attention.varlen.varlen_attn (torch >= 2.10)."""
    from torch.nn.attention.varlen import varlen_attn

    cu = torch.as_tensor(cu_seqlens, dtype=torch.int32, device=q.device)
    return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, window_size=(-1, 0) if causal else (-1, -1),
                       enable_gqa=q.shape[1] != k.shape[1])


_NPU_MASK: dict = {}


@_half
def npu_fusion(q, k, v, cu_seqlens, max_seqlen: int, causal: bool) -> torch.Tensor:
    """NPU: torch_npu.npu_fusion_attention, TND layout, cumulative segment ends, sparse_mode 3 (causal)."""
    import torch_npu

    ends = _bounds(cu_seqlens)[1:]
    kw = {}
    if causal:
        key = q.device
        if key not in _NPU_MASK:  # the compressed 2048x2048 upper-triangle mask MindSpeed uses
            _NPU_MASK[key] = torch.ones(2048, 2048, dtype=torch.bool, device=q.device).triu(1)
        kw = dict(atten_mask=_NPU_MASK[key], sparse_mode=3)
    return torch_npu.npu_fusion_attention(
        q, k, v, q.shape[1], input_layout="TND", scale=1.0 / math.sqrt(q.shape[-1]),
        actual_seq_qlen=ends, actual_seq_kvlen=ends, **kw,
    )[0]


_KERNELS: dict[str, Callable] = {
    "npu_fusion": npu_fusion, "flash_attn": flash_attn_varlen, "torch_varlen": torch_varlen,
    "sdpa_doc": sdpa_per_document, "sdpa_mask": sdpa_block_mask,
}


def available_attn_impls(device: str) -> list[str]:
    """The attention paths that can run on this device, fastest first."""
    out = []
    if device == "npu":
        out.append("npu_fusion")
    if device == "cuda":
        try:
            import flash_attn  # noqa: F401

            out.append("flash_attn")
        except Exception:
            pass
        if _torch_varlen_works():
            out.append("torch_varlen")
    return out + ["sdpa_doc", "sdpa_mask"]


def _torch_varlen_works() -> bool:
    """Probe varlen_attn once on the current CUDA device (it needs a recent GPU and build)."""
    try:
        dev = torch.device("cuda")
        q = torch.randn(8, 2, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
        o = torch_varlen(q, q, q, torch.tensor([0, 3, 8], dtype=torch.int32, device=dev), 5, True)
        o.sum().backward()
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# Norm and MLP activation: plain torch everywhere, torch_npu's fused kernels when asked for on NPU.
# ---------------------------------------------------------------------------------------------


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2 RMSNorm: normalise in fp32, scale in the input dtype."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """torch.nn.functional.rms_norm (a fused kernel on recent CUDA builds)."""
    return F.rms_norm(x, (x.shape[-1],), weight.to(x.dtype), eps)


def rms_norm_npu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    import torch_npu

    return torch_npu.npu_rms_norm(x, weight.to(x.dtype), epsilon=eps)[0]


def swiglu_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU on the concatenated [gate | up] projection: silu(gate) * up."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def swiglu_npu(gate_up: torch.Tensor) -> torch.Tensor:
    import torch_npu

    return torch_npu.npu_swiglu(gate_up, dim=-1)


@dataclass
class Accel:
    """What the model and the recipe need to know about the device."""

    kind: str  # npu | cuda | cpu
    device: torch.device
    backend: str  # hccl | nccl | gloo
    attn_impl: str
    fused_rmsnorm: bool = False
    fused_swiglu: bool = False
    _attn: Callable = field(default=sdpa_per_document, repr=False)

    def __post_init__(self) -> None:
        if self.attn_impl not in _KERNELS:
            raise ValueError(f"unknown attention implementation {self.attn_impl!r}; one of {', '.join(ATTN_IMPLS)}")
        self._attn = _KERNELS[self.attn_impl]

    def varlen_attention(self, q, k, v, cu_seqlens, max_seqlen: int, causal: bool) -> torch.Tensor:
        """q [T,Hq,D], k/v [T,Hkv,D] -> [T,Hq,D], attention only within each cu_seqlens segment."""
        return self._attn(q, k, v, cu_seqlens, max_seqlen, causal)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if self.fused_rmsnorm:
            return rms_norm_npu(x, weight, eps) if self.kind == "npu" else rms_norm_torch(x, weight, eps)
        return rms_norm_ref(x, weight, eps)

    def swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.fused_swiglu and self.kind == "npu":
            return swiglu_npu(gate_up)
        return swiglu_ref(gate_up)

    def autocast(self, bf16: bool):
        """bf16 autocast on the device, or a no-op."""
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.kind, dtype=torch.bfloat16)

    def synchronize(self) -> None:
        if self.kind == "cuda":
            torch.cuda.synchronize()
        elif self.kind == "npu":
            torch.npu.synchronize()

    def peak_flops(self, bf16: bool) -> float:
        """Peak FLOP/s of one device, for MFU: data-sheet bf16 on accelerators; on CPU an FMA estimate.

        Override with MMTRAIN_PEAK_TFLOPS. The CPU figure assumes AVX2 (2 FMA x 8 fp32 lanes per cycle).
        """
        env = os.environ.get("MMTRAIN_PEAK_TFLOPS")
        if env:
            return float(env) * 1e12
        name = ""
        if self.kind == "cuda":
            name = torch.cuda.get_device_name(self.device)
        elif self.kind == "npu":
            name = torch.npu.get_device_name(self.device)
        for frag, flops in _PEAK_BF16:
            if frag in name:
                return flops
        if self.kind != "cpu":
            return 312e12
        return torch.get_num_threads() * _cpu_hz() * 32.0


def _cpu_hz() -> float:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1]) * 1e6
    except OSError:
        pass
    return 2.5e9


def default_attn_impl(kind: str, use_flash_attn: bool) -> str:
    """The varlen kernel for a device: fused/flash when asked for and available, else exact SDPA per document."""
    if use_flash_attn:
        return available_attn_impls(kind)[0]
    return "sdpa_doc"


def get_accel(device: str = "auto", *, use_flash_attn: bool = True, use_fused_rmsnorm: bool = False,
              use_fused_swiglu: bool = False, attn_impl: str | None = None, local_rank: int = 0) -> Accel:
    """Pick the device (auto: npu > cuda > cpu) and its kernels; the local rank selects the card."""
    kind = detect_device(device)
    if kind == "cpu":
        dev = torch.device("cpu")
    else:
        dev = torch.device(kind, local_rank)
        getattr(torch, kind).set_device(dev)
    impl = attn_impl or default_attn_impl(kind, use_flash_attn)
    if impl not in available_attn_impls(kind):
        raise ValueError(f"attention implementation {impl!r} is not available on {kind}")
    return Accel(kind=kind, device=dev, backend=BACKENDS[kind], attn_impl=impl,
                 fused_rmsnorm=use_fused_rmsnorm, fused_swiglu=use_fused_swiglu)
