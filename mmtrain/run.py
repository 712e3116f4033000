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
from mmtrain.args import TrainArgs, check_shards, tokenizer_path, validate
from mmtrain.batch import RowStats, concat_rows, row_stats, to_device
from mmtrain.flops import row_flops
from mmtrain.freeze import apply_freeze, parse_freeze, peak_memory_note
from mmtrain.hf import FILES_DIR, model_from_args, save_hf, save_model_files
from mmtrain.model import VLModel, num_params
from mmtrain.preflight import check_free_space, check_load_source, check_save_dir, checkpoint_bytes


@dataclass
class Data:
    """The packed stream for one rank and the tokenizer facts the model needs."""

    loader: Any  # iterable of canonical rows with state_dict() / load_state_dict()
    vocab_size: int
    image_token_id: int
    plan: dict[str, Any] | None = None  # what the epoch plan uses and leaves out (see plan_facts)
    tokenizer_file: str | None = None  # the tokenizer.json read (None: synthetic ids); export / generate use it
    notes: list[str] = field(default_factory=list)  # one-time lines for the run's log (e.g. the image decode)


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


def loader_data(args: TrainArgs, rank: int, world_size: int, pixel_dtype: str = "images") -> Data:
    """The real stream: mmdata's PackedLoader over the shard folders, with its tokenizer. Pixels travel as
    uint8 (4x fewer bytes through workers, pinned memory and the host-to-device copy) and the model
    normalises them on its device with the loader's own arithmetic (the same values as float32 rows)."""
    check_shards(args.shards)
    from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
    from mmdata.loader.plan import NoSampleFits

    tok = load_tokenizer(tokenizer_path(args))
    image_id = tok.image_placeholder_id
    if image_id is None:
        raise InputError(tok.path, "the tokenizer has no <|image_pad|> (or <image>) token")
    from mmtrain.args import cache_limit_bytes

    decode_mode, decode_note = image_decode(args, pixel_dtype)
    cfg = LoaderConfig(seq_len=args.seq_len, template=args.template, seed=args.seed, overlong=args.overlong,
                       pixel_dtype=pixel_dtype, bad_sample_budget=args.bad_sample_budget, shard_cache_dir=args.cache_dir,
                       cache_limit=cache_limit_bytes(args.cache_limit), image_decode=decode_mode)
    shards = args.shards[0] if len(args.shards) == 1 else list(args.shards)
    try:
        loader = PackedLoader(shards, tokenizer=tok, config=cfg, rank=rank, world_size=world_size,
                              num_workers=args.num_workers)
    except NoSampleFits as e:
        raise InputError(None, no_fit_message(args, e)) from None
    return Data(loader=loader, vocab_size=tok.vocab_size, image_token_id=image_id,
                plan=plan_facts(loader, args), tokenizer_file=tok.path, notes=[decode_note] if decode_note else [])


def image_decode(args: TrainArgs, pixel_dtype: str) -> tuple[str, str]:
    """--image-decode resolved on this rank's device (device only where it has a working JPEG decoder),
    and the line that says so (empty for the default, cpu)."""
    if args.image_decode == "cpu" or pixel_dtype != "images":
        return "cpu", ""
    from mmdata.loader.devdecode import resolve_image_decode

    kind = detect_device(args.device)
    index = int(os.environ.get("LOCAL_RANK", "0")) if kind != "cpu" else None
    return resolve_image_decode(args.image_decode, torch.device(kind, index))


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


def _all_reduce(t: torch.Tensor, world: int, group: Any = None) -> torch.Tensor:
    """Sum over the data-parallel ranks (tensor-parallel ranks hold the same batch)."""
    if world > 1:
        dist.all_reduce(t, group=group)
    return t


@dataclass
class Run:
    """What one training run holds between iterations."""

    args: TrainArgs
    rank: int
    world: int
    dp: int  # data-parallel size = world / --tensor-model-parallel-size
    accel: Accel
    log: Logger
    data: Data
    model: VLModel
    wrapped: torch.nn.Module
    opt: torch.optim.Optimizer
    n_micro: int
    peak_flops: float
    dp_group: Any = None  # None: the whole world
    iteration: int = 0
    skipped_total: int = 0
    nan_total: int = 0


@dataclass
class Step:
    """One iteration's outcome: loss over the global batch, grad norm and the counts behind the log."""

    loss: float
    grad_norm: float
    finite: bool
    lr: float
    wall_s: float
    data_s: float
    cpu_s: float
    real_tokens: float
    tokens: float
    flops: float


@dataclass
class Window:
    """Sums over the iterations since the last log line."""

    t: float = 0.0
    wait: float = 0.0
    loss: float = 0.0
    n: int = 0
    tok: float = 0.0
    real: float = 0.0
    flops: float = 0.0
    skipped: int = 0
    nan: int = 0
    grad_norm: float | None = None

    def add(self, s: Step) -> None:
        self.t += s.wall_s
        self.wait += s.data_s
        self.loss += s.loss if s.finite else 0.0
        self.n += 1
        self.real += s.real_tokens
        self.tok += s.tokens
        self.flops += s.flops
        self.skipped += 0 if s.finite else 1
        self.nan += 0 if s.finite else 1
        self.grad_norm = s.grad_norm

    def record(self, iteration: int, lr: float, args: TrainArgs, peak: float, world: int) -> dict:
        """The metrics of this window, under the names of the JSONL / TensorBoard outputs."""
        good = max(1, self.n - self.skipped)
        return {
            "iteration": iteration, "consumed_samples": iteration * args.global_batch_size,
            "elapsed_ms_per_iteration": 1000 * self.t / self.n, "learning_rate": lr,
            "global_batch_size": args.global_batch_size, "lm_loss": self.loss / good, "loss_scale": 1.0,
            "grad_norm": self.grad_norm, "skipped_iterations": self.skipped, "nan_iterations": self.nan,
            "tokens_per_second": self.real / self.t, "packing_efficiency": self.real / max(1.0, self.tok),
            "mfu": self.flops / (self.t * peak * world), "data_wait_share": self.wait / self.t,
        }


def _set_cpu_threads(args: TrainArgs, accel: Accel) -> None:
    if accel.kind == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Loader workers and other ranks need cores too; OpenMP spinning on a busy core is ~10x slower.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(min(torch.get_num_threads(), max(1, (os.cpu_count() or 1) // local - args.num_workers)))


def _setup(args: TrainArgs, data_factory: DataFactory, rank: int, world: int, local_rank: int, out) -> Run:
    """Device, data, model (wrapped for DDP / FSDP2) and optimizer, with the same initial weights on every rank."""
    accel = get_accel(args.device, use_flash_attn=args.use_flash_attn, use_fused_rmsnorm=args.use_fused_rmsnorm,
                      use_fused_swiglu=args.use_fused_swiglu, attn_impl=args.attn_impl, local_rank=local_rank)
    _set_cpu_threads(args, accel)
    log = Logger(args, rank, out)
    seed_everything(args.seed)
    tp = args.tensor_model_parallel_size
    dp = world // tp
    data = data_factory(args, rank // tp, dp)  # a tensor-parallel group reads one data-parallel share
    model = model_from_args(args, data.vocab_size, data.image_token_id, accel)
    log.info(apply_freeze(model, parse_freeze(args.freeze)))
    if args.save and rank == 0 and data.tokenizer_file:  # what export / generate need besides the weights
        _save_model_files(args.save, model.cfg, args.model, data.tokenizer_file)
    if args.recompute_granularity == "full":
        model.set_recompute(args.recompute_method, args.recompute_num_layers)
    dp_group = None
    if tp > 1:
        from mmtrain.tp import parallelize

        wrapped, dp_group = parallelize(model, accel.kind, world, tp)
    else:
        wrapped = wrap_model(model, accel, world, args.fsdp)
    opt = torch.optim.AdamW(param_groups(wrapped, args.weight_decay), lr=args.lr,
                            betas=(args.adam_beta1, args.adam_beta2), eps=1e-8,
                            foreach=None if accel.kind != "npu" and tp == 1 else False)
    n_micro = args.global_batch_size // (args.micro_batch_size * dp)
    return Run(args=args, rank=rank, world=world, dp=dp, dp_group=dp_group, accel=accel, log=log, data=data,
               model=model, wrapped=wrapped, opt=opt, n_micro=n_micro, peak_flops=accel.peak_flops(args.bf16))


def _save_model_files(save: str, cfg: Any, model_arg: str, tokenizer_file: str) -> None:
    """`save_model_files` into `save/hf_files`; on object storage written in a local temp folder and
    uploaded file by file (each object appears only when complete)."""
    from mmdata import storage

    if not storage.is_remote(save):
        save_model_files(Path(save) / FILES_DIR, cfg, model_arg, tokenizer_file)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = save_model_files(Path(tmp) / FILES_DIR, cfg, model_arg, tokenizer_file)
        for f in sorted(files.iterdir()):
            with storage.atomic_output(storage.join(save, FILES_DIR, f.name)) as out:
                out.write(f.read_bytes())


def _resume(r: Run) -> None:
    """--load: model, optimizer, loader position, RNG and counters from the latest checkpoint, if any."""
    cp = ckpt.load_checkpoint(r.args.load, r.rank)
    if cp is None:
        r.log.info(ckpt.no_checkpoint_note(r.args.load))
        return
    ckpt.check_model_matches(cp, r.model.cfg.to_dict())
    ckpt.restore_states(cp, r.wrapped, r.model, r.opt, r.args.fsdp)
    r.data.loader.load_state_dict(cp.loader)
    r.iteration = int(cp.state["iteration"])
    r.skipped_total = int(cp.state.get("skipped_iterations", 0))
    r.nan_total = int(cp.state.get("nan_iterations", 0))
    if cp.rng is not None:
        ckpt.set_rng_state(cp.rng)
    r.log.info(f"loaded checkpoint {cp.path} (iteration {r.iteration}, consumed samples {cp.state['consumed_samples']})")


def _announce(r: Run) -> None:
    args, model = r.args, r.model
    r.log.info(f"model {args.model}: {num_params(model) / 1e6:.1f}M parameters ({num_params(model, True) / 1e6:.1f}M "
               f"without embeddings) | device {r.accel.kind} ({r.accel.attn_impl} attention) | data-parallel "
               f"{r.dp} | tensor-parallel {args.tensor_model_parallel_size} | {r.n_micro} micro-batches of {args.micro_batch_size} x {args.seq_len} tokens per iteration")
    if r.data.plan is not None:
        for line in plan_note(r.data.plan):
            r.log.info(line)
    for line in getattr(r.data, "notes", ()):
        r.log.info(line)


def _counts(r: Run, micro: list[dict], n_rows: int) -> torch.Tensor:
    """[loss tokens, real tokens, capacity, FLOPs] of the global batch (summed over ranks), on the host."""
    stats: list[RowStats] = [row_stats(m) for m in micro]
    capacity = max(sum(s.tokens for s in stats), n_rows * r.args.seq_len)  # rows may come unpadded
    counts = torch.tensor([sum(s.loss_tokens for s in stats), sum(s.real_tokens for s in stats), capacity,
                           sum(row_flops(r.model.cfg, s.doc_lens, s.loss_tokens, s.frame_patches) for s in stats)],
                          dtype=torch.float64 if r.accel.kind != "npu" else torch.float32)
    return _all_reduce(counts.to(r.accel.device), r.dp, r.dp_group).cpu()


def _forward_backward(r: Run, micro: list[dict], n_global: float) -> torch.Tensor:
    """Accumulate gradients of sum(token losses) / n_global over the micro-batches; returns the local loss sum."""
    dt = torch.float32 if r.accel.kind == "npu" else torch.float64
    loss_sum = torch.zeros((), dtype=dt, device=r.accel.device)
    for j, mb in enumerate(micro):
        mb = to_device(mb, r.accel.device)
        with grad_sync(r.wrapped, j == r.n_micro - 1), r.accel.autocast(r.args.bf16):
            ls, _ = r.wrapped(mb)
            # DDP / FSDP average gradients over the data-parallel ranks: scale by their number for a plain sum.
            (ls * (r.dp / n_global)).backward()
        loss_sum += ls.detach().to(loss_sum.dtype)
    return loss_sum


def _grad_norm(r: Run) -> float:
    if r.args.tensor_model_parallel_size > 1:  # sharded and replicated gradients side by side
        from mmtrain.tp import grad_norm_and_clip

        return grad_norm_and_clip(list(r.wrapped.parameters()), r.args.clip_grad)
    params = r.wrapped.parameters()
    if r.args.clip_grad > 0:
        gn = torch.nn.utils.clip_grad_norm_(params, r.args.clip_grad)
    else:
        gn = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    return float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)


def _step(r: Run, rows_it: Iterator[dict], prof: Any) -> Step:
    """One iteration: read the global batch's rows, forward/backward each micro-batch, clip, optimizer step."""
    args = r.args
    r.accel.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    with prof.region("data_wait"):
        rows = [next(rows_it) for _ in range(r.n_micro * args.micro_batch_size)]
    t_data = time.perf_counter() - t0
    mbs = args.micro_batch_size
    micro = [concat_rows(rows[i * mbs:(i + 1) * mbs]) for i in range(r.n_micro)]
    counts = _counts(r, micro, len(rows))
    n_global = max(1.0, float(counts[0]))
    lr = lr_at(r.iteration + 1, args)
    for g in r.opt.param_groups:
        g["lr"] = lr
    loss_sum = _forward_backward(r, micro, n_global)
    gn = _grad_norm(r)
    loss = float(_all_reduce(loss_sum, r.dp, r.dp_group)) / n_global
    finite = math.isfinite(gn) and math.isfinite(loss)
    with prof.region("optimizer"):
        if finite:
            r.opt.step()
        r.opt.zero_grad(set_to_none=True)
    r.accel.synchronize()
    return Step(loss=loss, grad_norm=gn, finite=finite, lr=lr, wall_s=time.perf_counter() - t0, data_s=t_data,
                cpu_s=time.process_time() - c0, real_tokens=float(counts[1]), tokens=float(counts[2]),
                flops=float(counts[3]))


def _log_window(r: Run, win: Window, lr: float) -> None:
    r.skipped_total += win.skipped
    r.nan_total += win.nan
    rec = win.record(r.iteration, lr, r.args, r.peak_flops, r.world)
    if r.data.plan is not None:
        rec.update({f"plan_{k}": v for k, v in r.data.plan.items()})
    line = format_log_line(
        iteration=r.iteration, max_steps=r.args.max_steps, consumed=rec["consumed_samples"],
        elapsed_ms=rec["elapsed_ms_per_iteration"], lr=lr, gbs=r.args.global_batch_size, loss=rec["lm_loss"],
        grad_norm=win.grad_norm, skipped=win.skipped, nan=win.nan, tokens_per_s=rec["tokens_per_second"],
        packing=rec["packing_efficiency"], mfu=rec["mfu"]) + peak_memory_note(r.accel.kind)
    r.log.log(line, rec)


def _close(r: Run) -> None:
    r.log.close()
    if hasattr(r.data.loader, "close"):
        r.data.loader.close()


def _train(args: TrainArgs, data_factory: DataFactory, rank: int, world: int, local_rank: int, out) -> TrainResult:
    from mmdata.storage import is_remote

    if args.save:
        check_save_dir(args.save, rank)  # an unwritable --save fails now, not after the run
    if args.load:
        check_load_source(args.load)  # an unreachable endpoint or missing bucket too
    r = _setup(args, data_factory, rank, world, local_rank, out)
    if args.save and not is_remote(args.save):  # object storage has no free-space figure to check
        check_free_space(args.save, checkpoint_bytes(num_params(r.model)))
    if args.load:
        _resume(r)
    result = TrainResult(iteration=r.iteration, consumed_samples=r.iteration * args.global_batch_size, losses={})
    if r.iteration >= args.max_steps and args.load:
        rel = "=" if r.iteration == args.max_steps else ">"
        r.log.info(f"nothing to do: checkpoint is at iteration {r.iteration} {rel} --max-steps {args.max_steps}")
        _close(r)
        return result
    _announce(r)
    _loop(r, result)
    _save_extras(r)
    result.iteration = r.iteration
    result.consumed_samples = r.iteration * args.global_batch_size
    _close(r)
    return result


def _loop(r: Run, result: TrainResult) -> None:
    """Iterations until --max-steps (or --exit-interval), logging and checkpointing on the way."""
    from mmtrain.profiling import make_profiler

    args = r.args
    rows_it = cycle(r.data.loader)
    prof = make_profiler(args, r.rank, r.accel, r.log.info)
    win = Window()
    r.model.train()
    while r.iteration < args.max_steps:
        prof.before(r.iteration + 1)
        s = _step(r, rows_it, prof)
        r.iteration += 1
        prof.after(r.iteration, s.wall_s, s.data_s)
        result.losses[r.iteration] = s.loss
        result.data_wait_s += s.data_s
        result.step_s += s.wall_s
        result.steps.append((s.wall_s, s.data_s, int(s.real_tokens), s.cpu_s))
        result.real_tokens += int(s.real_tokens)
        result.tokens += int(s.tokens)
        win.add(s)
        if r.iteration % args.log_interval == 0 or r.iteration == args.max_steps:
            _log_window(r, win, s.lr)
            win = Window()
        stop = bool(args.exit_interval and r.iteration % args.exit_interval == 0)
        if args.save and ((args.save_interval and r.iteration % args.save_interval == 0)
                          or r.iteration == args.max_steps or stop):
            _save(r)
            r.log.info(f"saved checkpoint at iteration {r.iteration} to {args.save}")
        if stop:
            r.log.info(f"exiting at iteration {r.iteration} (--exit-interval {args.exit_interval})")
            break
    prof.close()


def _save_extras(r: Run) -> None:
    """`--max-steps 0 --save`: iteration 0 (the loaded weights, untouched); `--save-hf`: the final weights
    as a Hugging Face folder."""
    args = r.args
    if args.save and args.max_steps == 0 and r.iteration == 0:
        _save(r)
        r.log.info(f"saved checkpoint at iteration 0 to {args.save}")
    if args.save_hf:
        msd = ckpt.full_states(r.wrapped, r.model, r.opt, args.fsdp)[0]
        if r.rank == 0:
            out = save_hf(args.save_hf, msd, r.model.cfg, args.model, r.data.tokenizer_file)
            r.log.info(f"saved Hugging Face folder {out}")


def _save(r: Run) -> None:
    args, it = r.args, r.iteration
    state = {"iteration": it, "consumed_samples": it * args.global_batch_size,
             "skipped_iterations": r.skipped_total, "nan_iterations": r.nan_total,
             "scheduler": {"kind": "warmup+cosine", "lr": args.lr, "min_lr": args.min_lr,
                           "warmup_iters": args.lr_warmup_iters, "max_steps": args.max_steps,
                           "num_steps": it},
             "args": asdict(args), "model_config": r.model.cfg.to_dict(), "world_size": r.world}
    ckpt.save(args.save, it, r.wrapped, r.model, r.opt, fsdp=args.fsdp, fmt=ckpt.resolve_format(args),
              rank=r.rank, state=state, loader_state=r.data.loader.state_dict())
