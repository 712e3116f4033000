"""Tensor parallelism for the decoder (`--tensor-model-parallel-size N`) with PyTorch DTensor.

Megatron's split of each decoder layer over the N ranks of a tensor-parallel group: q/k/v and the fused
[gate | up] projection column-parallel, o and down projections row-parallel (one all-reduce each in
forward), so every rank holds 1/N of the attention heads and of the MLP. Embeddings, norms, the LM
head and the ViT stay replicated. Ranks r*N .. r*N+N-1 form one tensor-parallel group and read the same
data; data parallelism (FSDP2) runs over the other mesh dimension.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from mmdata.errors import InputError


def check_divisible(text_cfg: Any, tp: int) -> None:
    """Heads, KV heads and the MLP width must split evenly over the tensor-parallel ranks."""
    for name in ("heads", "kv_heads", "ffn"):
        n = getattr(text_cfg, name)
        if n % tp:
            raise InputError(None, f"--tensor-model-parallel-size {tp} does not divide the decoder's {name} ({n}): "
                                   "pick a divisor")


def parallelize(model: torch.nn.Module, kind: str, world: int, tp: int) -> tuple[torch.nn.Module, Any]:
    """Shard the decoder over a (dp, tp) mesh and wrap data parallelism over dp.
    Returns (wrapped model, the data-parallel process group for loss and count reductions)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    t = model.cfg.text
    check_divisible(t, tp)
    mesh = init_device_mesh(kind, (world // tp, tp), mesh_dim_names=("dp", "tp"))
    plan = {"q_proj": ColwiseParallel(), "k_proj": ColwiseParallel(), "v_proj": ColwiseParallel(),
            "o_proj": RowwiseParallel(),
            # [gate | up] is one weight: its column shards are not (gate_r | up_r), so keep the output a
            # DTensor and let swiglu's chunk gather it (correct; one all-gather more than split weights).
            "gate_up_proj": ColwiseParallel(use_local_output=False), "down_proj": RowwiseParallel()}
    local = replace(t, hidden=t.hidden // tp, heads=t.heads // tp, kv_heads=t.kv_heads // tp)
    for layer in model.layers:
        parallelize_module(layer, mesh["tp"], plan)
        layer.cfg = local  # its forward views q/k/v as this rank's heads (head_dim unchanged)
    dp_mesh = mesh["dp"]
    if dp_mesh.size() == 1:
        return model, dp_mesh.get_group()
    from torch.distributed.fsdp import fully_shard  # validate() asked for --fsdp: DDP takes no DTensors

    for blk in list(model.visual.blocks) + list(model.layers):
        fully_shard(blk, mesh=dp_mesh)
    return fully_shard(model, mesh=dp_mesh), dp_mesh.get_group()


def grad_norm_and_clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Global gradient norm over DTensor (sharded) and plain (replicated) gradients, clipped to max_norm."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = torch.zeros((), dtype=torch.float64)
    for g in grads:
        n = torch.linalg.vector_norm(g.float())
        n = n.full_tensor() if hasattr(n, "full_tensor") else n
        sq += n.double().cpu() ** 2
    total = float(sq.sqrt())
    if max_norm > 0 and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g.mul_(scale)
    return total
