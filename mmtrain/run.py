"""The training recipe in one readable file: setup, loop, log, checkpoint.

`train(TrainArgs(...))` streams packed rows (one per sample, Megatron's meaning) through a
Qwen2-VL-shaped model with AdamW, warmup + cosine, clipping, bf16 autocast, recompute and gradient
accumulation. The loss of an iteration is the sum of token losses over the whole global batch divided
by the number of loss tokens in the global batch (counted across ranks first), so neither packing nor
accumulation nor the data-parallel split biases it. Runs alone or under torchrun (DDP; FSDP2 option).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mmdata.errors import InputError
from mmtrain import checkpoint as ckpt
from mmtrain.accel import BACKENDS, Accel, detect_device, get_accel
from mmtrain.args import TrainArgs, check_shards, validate
from mmtrain.batch import RowStats, concat_rows, row_stats, to_device
from mmtrain.flops import row_flops
from mmtrain.model import VLModel, build_model, num_params


@dataclass
class Data:
    """The packed stream for one rank and the tokenizer facts the model needs."""

    loader: Any  # iterable of canonical rows with state_dict() / load_state_dict()
    vocab_size: int
    image_token_id: int
    plan: dict[str, Any] | None = None  # what the epoch plan uses and leaves out (see plan_facts)


DataFactory = Callable[[TrainArgs, int, int], Data]


@dataclass
class TrainResult:
    iteration: int
    consumed_samples: int
    losses: dict[int, float]  # iteration -> lm loss of that iteration
    data_wait_s: float = 0.0
    step_s: float = 0.0
    real_tokens: int = 0
    tokens: int = 0
    # per iteration: (wall s, data-wait s, real tokens, CPU s of this process)
    steps: list[tuple[float, float, int, float]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- setup


def loader_data(args: TrainArgs, rank: int, world_size: int, pixel_dtype: str = "uint8") -> Data:
    """The real stream: mmdata's PackedLoader over the shard folders, with its tokenizer. Pixels travel as
    uint8 (4x fewer bytes through workers, pinned memory and the host-to-device copy) and the model
    normalises them on its device with the loader's own arithmetic (the same values as float32 rows)."""
    check_shards(args.shards)
    from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
    from mmdata.loader.plan import NoSampleFits

    tok = load_tokenizer(args.tokenizer)
    image_id = tok.image_placeholder_id
    if image_id is None:
        raise InputError(tok.path, "the tokenizer has no <|image_pad|> (or <image>) token")
    from mmtrain.args import cache_limit_bytes

    cfg = LoaderConfig(seq_len=args.seq_len, template=args.template, seed=args.seed, overlong=args.overlong,
                       pixel_dtype=pixel_dtype, shard_cache_dir=args.cache_dir,
                       cache_limit=cache_limit_bytes(args.cache_limit))
    shards = args.shards[0] if len(args.shards) == 1 else list(args.shards)
    try:
        loader = PackedLoader(shards, tokenizer=tok, config=cfg, rank=rank, world_size=world_size,
                              num_workers=args.num_workers)
    except NoSampleFits as e:
        raise InputError(None, no_fit_message(args, e)) from None
    return Data(loader=loader, vocab_size=tok.vocab_size, image_token_id=image_id,
                plan=plan_facts(loader, args))


def plan_facts(loader: Any, args: TrainArgs) -> dict[str, Any]:
    """Per epoch: samples in the data, samples the plan uses, and those it drops or truncates."""
    st = loader.stats()
    total = int(sum(len(s.lengths) for s in loader.sets))
    unreadable = int(loader.unplannable)
    dropped = int(st["planned_dropped"])
    return {"samples": total, "used": total - dropped, "dropped_overlong": max(0, dropped - unreadable),
            "dropped_unreadable": unreadable, "truncated": int(st["planned_truncated"]),
            "overlong": args.overlong, "seq_len": args.seq_len}


def plan_note(p: dict[str, Any]) -> list[str]:
    """The one-time note on what --seq-len / --overlong leave out; loud when most of the data goes."""
    lines = [f"data: {p['used']:,} of {p['samples']:,} samples used per epoch at --seq-len {p['seq_len']} "
             f"(--overlong {p['overlong']}): {p['dropped_overlong']:,} dropped as longer than --seq-len, "
             f"{p['truncated']:,} truncated, {p['dropped_unreadable']:,} unreadable"]
    lost = p["dropped_overlong"] / max(1, p["samples"])
    if lost > 0.5:
        lines.append(f"WARNING: {lost:.0%} of the samples are longer than --seq-len {p['seq_len']} and are never "
                     "trained on: raise --seq-len (`mmdata inspect DIR` shows the lengths) or use --overlong truncate")
    return lines


def no_fit_message(args: TrainArgs, e: Any) -> str:
    """The loader's "nothing to plan" in the words of mmtrain's flags."""
    where = ", ".join(args.shards)
    if e.shortest is None:
        what = "no readable samples" if e.samples else "no samples"
        return f"{where}: {what} (index.parquet lists {e.samples}): nothing to train on"
    return (f"no sample of {where} fits --seq-len {args.seq_len} (shortest sample: {e.shortest} tokens, "
            f"{e.samples} samples); raise --seq-len")


def synthetic_data(args: TrainArgs, rank: int, world_size: int) -> Data:
    """Synthetic rows (tests, benchmarks): no shards, no tokenizer."""
    from mmtrain.synthetic import SyntheticLoader, SynthVocab

    v = SynthVocab()
    return Data(SyntheticLoader(args.seq_len, args.seed, rank, world_size, v), v.size, v.image_pad)


def init_distributed(backend: str) -> tuple[int, int, int, bool]:
    """(rank, world size, local rank, whether we initialised the group) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    started = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        started = True
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), started


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(it: int, args: TrainArgs) -> float:
    """Learning rate of 1-based iteration `it`: linear warmup to --lr, then cosine down to --min-lr at --max-steps."""
    w = args.lr_warmup_iters
    if w > 0 and it <= w:
        return args.lr * it / w
    span = max(1, args.max_steps - w)
    ratio = min(1.0, max(0.0, (it - w) / span))
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Megatron's split: no weight decay on biases and norm weights (1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cycle(loader: Any) -> Iterator[dict]:
    """Endless rows: a loader that ends an epoch is iterated again (it moves to its next epoch)."""
    while True:
        got = False
        for row in loader:
            got = True
            yield row
        if not got:
            raise InputError(None, "the data stream is empty (no sample fits --seq-len?)")


# --------------------------------------------------------------------------------------- logging


def format_log_line(*, iteration: int, max_steps: int, consumed: int, elapsed_ms: float, lr: float, gbs: int,
                    loss: float, grad_norm: float | None, skipped: int, nan: int, tokens_per_s: float,
                    packing: float, mfu: float) -> str:
    """Megatron's `training_log` line, then throughput, packing efficiency and MFU."""
    s = f" iteration {iteration:8d}/{max_steps:8d} |"
    s += f" consumed samples: {consumed:12d} |"
    s += f" elapsed time per iteration (ms): {elapsed_ms:.1f} |"
    s += f" learning rate: {lr:.6E} |"
    s += f" global batch size: {gbs:5d} |"
    s += f" lm loss: {loss:.6E} |"
    s += " loss scale: 1.0 |"
    if grad_norm is not None:
        s += f" grad norm: {grad_norm:.3f} |"
    s += f" number of skipped iterations: {skipped:3d} |"
    s += f" number of nan iterations: {nan:3d} |"
    s += f" tokens per second: {tokens_per_s:.1f} | packing efficiency: {100 * packing:.1f}% | MFU: {100 * mfu:.1f}%"
    return s


class Logger:
    """Rank 0's outputs: the flushed log line, TensorBoard scalars and a JSONL metrics file."""

    def __init__(self, args: TrainArgs, rank: int, out=None):
        self.on = rank == 0
        self.out = out or sys.stdout
        self.tb = None
        self.metrics = None
        if not self.on:
            return
        if args.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(args.tensorboard_dir)
        if args.metrics:
            Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
            self.metrics = open(args.metrics, "a", encoding="utf-8")

    def info(self, msg: str) -> None:
        if self.on:
            print(msg, file=self.out, flush=True)

    def log(self, line: str, rec: dict) -> None:
        if not self.on:
            return
        print(line, file=self.out, flush=True)
        if self.metrics:
            self.metrics.write(json.dumps(rec) + "\n")
            self.metrics.flush()
        if self.tb:
            it = rec["iteration"]
            for k in ("lm_loss", "learning_rate", "grad_norm", "tokens_per_second", "packing_efficiency", "mfu",
                      "elapsed_ms_per_iteration", "data_wait_share"):
                if rec.get(k) is not None:
                    self.tb.add_scalar(k.replace("_", "-"), rec[k], it)
            self.tb.flush()

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()
        if self.tb:
            self.tb.close()


# ------------------------------------------------------------------------------------------ model


def wrap_model(model: VLModel, accel: Accel, world: int, fsdp: bool) -> torch.nn.Module:
    """DDP (default) or FSDP2 (`--fsdp`: each decoder layer and ViT block sharded, then the root)."""
    if world <= 1:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for blk in list(model.visual.blocks) + list(model.layers):
            fully_shard(blk)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [accel.device.index] if accel.kind != "cpu" else None
    return DDP(model, device_ids=ids)


def grad_sync(wrapped: torch.nn.Module, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an iteration."""
    if hasattr(wrapped, "no_sync") and not enabled:
        return wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):
        wrapped.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def full_states(wrapped: torch.nn.Module, model: VLModel, opt: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Model and optimizer state as plain full tensors on the host (collective under FSDP2)."""
    if fsdp and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_state_dict,
        )

        return get_state_dict(wrapped, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict(), opt.state_dict()


def load_states(wrapped: torch.nn.Module, model: VLModel, opt: torch.optim.Optimizer, fsdp: bool, msd: dict, osd: dict) -> None:
    if fsdp and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_state_dict,
        )

        set_state_dict(wrapped, opt, model_state_dict=msd, optim_state_dict=osd,
                       options=StateDictOptions(full_state_dict=True))
        return
    model.load_state_dict(msd)
    opt.load_state_dict(osd)


# ------------------------------------------------------------------------------------------- train


def train(args: TrainArgs, data_factory: DataFactory | None = None, out=None) -> TrainResult:
    """Run (or resume) training to --max-steps; returns the per-iteration losses and timings."""
    try:
        kind = detect_device(args.device)
    except ValueError as e:
        raise InputError(None, str(e)) from None
    rank, world, local_rank, _ = init_distributed(BACKENDS[kind])
    # The process group is left up for the caller (a second train() in the same process reuses it;
    # re-creating it on the same port can hang). The CLI tears it down at exit.
    validate(args, world)
    return _train(args, data_factory or loader_data, rank, world, local_rank, out)


def _all_reduce(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t)
    return t


def _train(args: TrainArgs, data_factory: DataFactory, rank: int, world: int, local_rank: int, out) -> TrainResult:
    accel = get_accel(args.device, use_flash_attn=args.use_flash_attn, use_fused_rmsnorm=args.use_fused_rmsnorm,
                      use_fused_swiglu=args.use_fused_swiglu, attn_impl=args.attn_impl, local_rank=local_rank)
    if accel.kind == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Loader workers and other ranks need cores too; OpenMP spinning on a busy core is ~10x slower.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(min(torch.get_num_threads(), max(1, (os.cpu_count() or 1) // local - args.num_workers)))
    barrier = (lambda: dist.barrier()) if world > 1 else (lambda: None)
    log = Logger(args, rank, out)
    seed_everything(args.seed)  # same initial weights on every rank
    data = data_factory(args, rank, world)
    model = build_model(args.model, data.vocab_size, data.image_token_id, accel=accel)
    if args.recompute_granularity == "full":
        model.set_recompute(args.recompute_method, args.recompute_num_layers)
    wrapped = wrap_model(model, accel, world, args.fsdp)
    opt = torch.optim.AdamW(param_groups(wrapped, args.weight_decay), lr=args.lr,
                            betas=(args.adam_beta1, args.adam_beta2), eps=1e-8,
                            foreach=None if accel.kind != "npu" else False)

    iteration, skipped_total, nan_total = 0, 0, 0
    if args.load:
        cp = ckpt.load_checkpoint(args.load, rank)
        if cp is None:
            log.info(ckpt.no_checkpoint_note(args.load))
        else:
            load_states(wrapped, model, opt, args.fsdp, cp.model, cp.optim)
            data.loader.load_state_dict(cp.loader)
            iteration = int(cp.state["iteration"])
            skipped_total = int(cp.state.get("skipped_iterations", 0))
            nan_total = int(cp.state.get("nan_iterations", 0))
            if cp.rng is not None:
                ckpt.set_rng_state(cp.rng)
            log.info(f"loaded checkpoint {cp.path} (iteration {iteration}, consumed samples {cp.state['consumed_samples']})")
            if iteration >= args.max_steps:
                rel = "=" if iteration == args.max_steps else ">"
                log.info(f"nothing to do: checkpoint is at iteration {iteration} {rel} --max-steps {args.max_steps}")
                log.close()
                if hasattr(data.loader, "close"):
                    data.loader.close()
                return TrainResult(iteration=iteration, consumed_samples=iteration * args.global_batch_size,
                                   losses={})

    n_micro = args.global_batch_size // (args.micro_batch_size * world)
    peak = accel.peak_flops(args.bf16)
    n_par = num_params(model)
    log.info(f"model {args.model}: {n_par / 1e6:.1f}M parameters ({num_params(model, True) / 1e6:.1f}M without "
             f"embeddings) | device {accel.kind} ({accel.attn_impl} attention) | data-parallel {world} | "
             f"{n_micro} micro-batches of {args.micro_batch_size} x {args.seq_len} tokens per iteration")

    if data.plan is not None:
        for line in plan_note(data.plan):
            log.info(line)
    rows_it = cycle(data.loader)
    result = TrainResult(iteration=iteration, consumed_samples=iteration * args.global_batch_size, losses={})
    win = {"t": 0.0, "wait": 0.0, "loss": 0.0, "n": 0, "tok": 0.0, "real": 0.0, "flops": 0.0, "skipped": 0, "nan": 0}
    model.train()
    while iteration < args.max_steps:
        accel.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        rows = [next(rows_it) for _ in range(n_micro * args.micro_batch_size)]
        t_data = time.perf_counter() - t0
        micro = [concat_rows(rows[i * args.micro_batch_size:(i + 1) * args.micro_batch_size]) for i in range(n_micro)]
        stats: list[RowStats] = [row_stats(m) for m in micro]
        capacity = max(sum(s.tokens for s in stats), len(rows) * args.seq_len)  # rows may come unpadded
        counts = torch.tensor([sum(s.loss_tokens for s in stats), sum(s.real_tokens for s in stats), capacity,
                               sum(row_flops(model.cfg, s.doc_lens, s.loss_tokens, s.frame_patches) for s in stats)],
                              dtype=torch.float64 if accel.kind != "npu" else torch.float32)
        counts = _all_reduce(counts.to(accel.device), world).cpu()
        n_global = max(1.0, float(counts[0]))
        lr = lr_at(iteration + 1, args)
        for g in opt.param_groups:
            g["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float32 if accel.kind == "npu" else torch.float64, device=accel.device)
        for j, mb in enumerate(micro):
            mb = to_device(mb, accel.device)
            with grad_sync(wrapped, j == n_micro - 1), accel.autocast(args.bf16):
                ls, _ = wrapped(mb)
                # DDP / FSDP average gradients over ranks: scale by the world size to get a plain sum.
                (ls * (world / n_global)).backward()
            loss_sum += ls.detach().to(loss_sum.dtype)
        if args.clip_grad > 0:
            gn = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), args.clip_grad)
        else:
            gn = torch.nn.utils.get_total_norm([p.grad for p in wrapped.parameters() if p.grad is not None])
        gn = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
        loss = float(_all_reduce(loss_sum, world)) / n_global
        finite = math.isfinite(gn) and math.isfinite(loss)
        if finite:
            opt.step()
        else:
            win["skipped"] += 1
            win["nan"] += 1
        opt.zero_grad(set_to_none=True)
        accel.synchronize()
        dt = time.perf_counter() - t0
        iteration += 1
        result.losses[iteration] = loss
        result.data_wait_s += t_data
        result.step_s += dt
        result.steps.append((dt, t_data, int(counts[1]), time.process_time() - c0))
        result.real_tokens += int(counts[1])
        result.tokens += int(counts[2])
        win["t"] += dt
        win["wait"] += t_data
        win["loss"] += loss if finite else 0.0
        win["n"] += 1
        win["real"] += float(counts[1])
        win["tok"] += float(counts[2])
        win["flops"] += float(counts[3])
        win["gn"] = gn

        if iteration % args.log_interval == 0 or iteration == args.max_steps:
            skipped_total += win["skipped"]
            nan_total += win["nan"]
            good = max(1, win["n"] - win["skipped"])
            rec = {
                "iteration": iteration, "consumed_samples": iteration * args.global_batch_size,
                "elapsed_ms_per_iteration": 1000 * win["t"] / win["n"], "learning_rate": lr,
                "global_batch_size": args.global_batch_size, "lm_loss": win["loss"] / good, "loss_scale": 1.0,
                "grad_norm": win["gn"], "skipped_iterations": win["skipped"], "nan_iterations": win["nan"],
                "tokens_per_second": win["real"] / win["t"], "packing_efficiency": win["real"] / max(1.0, win["tok"]),
                "mfu": win["flops"] / (win["t"] * peak * world), "data_wait_share": win["wait"] / win["t"],
            }
            if data.plan is not None:
                rec.update({f"plan_{k}": v for k, v in data.plan.items()})
            line = format_log_line(
                iteration=iteration, max_steps=args.max_steps, consumed=rec["consumed_samples"],
                elapsed_ms=rec["elapsed_ms_per_iteration"], lr=lr, gbs=args.global_batch_size, loss=rec["lm_loss"],
                grad_norm=gn, skipped=win["skipped"], nan=win["nan"], tokens_per_s=rec["tokens_per_second"],
                packing=rec["packing_efficiency"], mfu=rec["mfu"])
            log.log(line, rec)
            win = {k: 0.0 if isinstance(v, float) else 0 for k, v in win.items()}

        stop = bool(args.exit_interval and iteration % args.exit_interval == 0)
        if args.save and ((args.save_interval and iteration % args.save_interval == 0)
                          or iteration == args.max_steps or stop):
            _save(args, iteration, rank, barrier, wrapped, model, opt, data, skipped_total, nan_total)
            log.info(f"saved checkpoint at iteration {iteration} to {args.save}")
        if stop:
            log.info(f"exiting at iteration {iteration} (--exit-interval {args.exit_interval})")
            break

    result.iteration = iteration
    result.consumed_samples = iteration * args.global_batch_size
    log.close()
    return result


def _save(args: TrainArgs, iteration: int, rank: int, barrier, wrapped, model, opt, data: Data,
          skipped: int, nan: int) -> None:
    msd, osd = full_states(wrapped, model, opt, args.fsdp)
    state = {"iteration": iteration, "consumed_samples": iteration * args.global_batch_size,
             "skipped_iterations": skipped, "nan_iterations": nan,
             "scheduler": {"kind": "warmup+cosine", "lr": args.lr, "min_lr": args.min_lr,
                           "warmup_iters": args.lr_warmup_iters, "max_steps": args.max_steps,
                           "num_steps": iteration},
             "args": asdict(args), "model_config": model.cfg.to_dict()}
    ckpt.save_checkpoint(args.save, iteration, rank=rank, barrier=barrier,
                         model_state=msd if rank == 0 else None, optim_state=osd if rank == 0 else None,
                         state=state if rank == 0 else None, loader_state=data.loader.state_dict(),
                         rng=ckpt.rng_state())
