"""The options of `mmtrain run` and their checks, free of torch so that the CLI rejects bad input fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmdata.format.names import MANIFEST
from mmdata.errors import InputError

MODEL_NAMES = ("tiny", "100m", "0.5b", "1b", "2b")


@dataclass
class TrainArgs:
    """Every option of `mmtrain run` (CONTRACT s.5 plus Megatron / MindSpeed-MM names)."""

    shards: list[str] = field(default_factory=list)
    tokenizer: str | None = None
    model: str = "tiny"
    seq_len: int = 2048
    micro_batch_size: int = 1
    global_batch_size: int = 8
    max_steps: int = 100
    lr: float = 1e-4
    min_lr: float = 0.0
    lr_warmup_iters: int = 0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    clip_grad: float = 1.0
    bf16: bool = False
    recompute_granularity: str | None = None
    recompute_method: str | None = None
    recompute_num_layers: int = 0
    use_flash_attn: bool = False
    use_fused_rmsnorm: bool = False
    use_fused_swiglu: bool = False
    attn_impl: str | None = None
    template: str = "qwen2vl"
    overlong: str = "drop"
    bad_sample_budget: int = 0  # samples (unreadable, or cut off a truncated shard) a run may skip; CONTRACT s.9
    num_workers: int = 2
    log_interval: int = 10
    save: str | None = None
    save_interval: int | None = None
    load: str | None = None
    exit_interval: int | None = None
    device: str = "auto"
    seed: int = 0
    tensorboard_dir: str | None = None
    metrics: str | None = None
    fsdp: bool = False
    freeze: list[str] = field(default_factory=list)  # parts kept fixed: vision, merger, llm (docs/train.md)
    save_hf: str | None = None  # write a Hugging Face folder of the final weights here
    ckpt_format: str | None = None  # torch | torch_dcp; default torch_dcp under --fsdp, else torch
    profile: bool = False
    profile_step_start: int = 10
    profile_step_end: int = 12
    profile_ranks: list[int] = field(default_factory=lambda: [0])
    tensor_model_parallel_size: int = 1
    cache_dir: str | None = None  # --cache-dir: local cache of shards read from object storage
    cache_limit: str = "10GB"  # --cache-limit
    image_decode: str = "cpu"  # --image-decode cpu | device | auto (docs/loader.md "Device JPEG decode")


def check_shards(shards: list[str]) -> None:
    """Every --shards folder exists and holds shards."""
    from mmdata import storage

    for s in shards:
        if storage.is_remote(s):  # one request each; a bad endpoint, key or bucket fails here in seconds
            if not storage.isdir(s):
                raise InputError(s, "shards folder not found")
            if not storage.exists(storage.join(s, MANIFEST)):
                raise InputError(s, "no manifest.json here (expected the output folder of `mmdata shard`)")
            continue
        p = Path(s)
        if p.is_file():
            raise InputError(p, "--shards takes the shard folder (holding index.parquet), not a file in it")
        if not p.is_dir():
            raise InputError(p, "shards folder not found")
        if not (p / MANIFEST).is_file() and not any(p.glob("*.tar")):
            raise InputError(p, "no shards here (expected manifest.json and shard-*.tar from `mmdata shard`)")


def tokenizer_path(args: TrainArgs) -> str | None:
    """--tokenizer, else a --model folder's own tokenizer (a preset: the shipped one)."""
    return args.tokenizer or (None if args.model in MODEL_NAMES else args.model)


def validate(args: TrainArgs, world_size: int) -> None:
    """Reject bad option combinations with one clear line (InputError -> exit 2)."""
    def bad(msg: str) -> None:
        raise InputError(None, msg)

    from mmdata.storage import is_remote

    for flag, where in (("--save-hf", args.save_hf), ("--tensorboard-dir", args.tensorboard_dir),
                        ("--metrics", args.metrics)):
        if where and is_remote(where):
            bad(f"{flag} {where}: writes local files; give a local folder (--save and --load take s3:// urls)")
    if args.profile and args.save and is_remote(args.save) and not args.tensorboard_dir:
        bad("--profile with --save on object storage needs --tensorboard-dir (a local folder for the traces)")
    cache_limit_bytes(args.cache_limit)

    if args.model not in MODEL_NAMES and not Path(args.model).expanduser().is_dir():
        if "/" in args.model:
            raise InputError(args.model, "--model: no such folder (a local Hugging Face Qwen2-VL / Qwen2.5-VL folder)")
        bad(f"--model must be one of {', '.join(MODEL_NAMES)} or a Hugging Face model folder, got {args.model!r}")
    if args.max_steps < 0:
        bad(f"--max-steps must be at least 0, got {args.max_steps}")
    from mmtrain.freeze import parse_freeze

    parse_freeze(args.freeze)
    for name in ("seq_len", "micro_batch_size", "global_batch_size", "log_interval"):
        if getattr(args, name) < 1:
            bad(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    tp = args.tensor_model_parallel_size
    if tp < 1 or world_size % tp:
        bad(f"--tensor-model-parallel-size {tp} must divide the number of ranks ({world_size})")
    dp = world_size // tp
    if args.global_batch_size % (args.micro_batch_size * dp):
        bad(f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
            f"{args.micro_batch_size} x data-parallel size {dp}")
    if tp > 1 and dp > 1 and not args.fsdp:
        bad(f"--tensor-model-parallel-size {tp} with data-parallel size {dp} needs --fsdp (DDP cannot hold "
            "the tensor-parallel DTensor parameters; FSDP2 shards them over the data-parallel ranks)")
    if tp > 1 and args.ckpt_format == "torch":
        bad("--tensor-model-parallel-size > 1 saves sharded checkpoints: use --ckpt-format torch_dcp (the default)")
    if not (args.lr > 0 and 0 <= args.min_lr <= args.lr):
        bad(f"need 0 <= --min-lr <= --lr and --lr > 0, got --lr {args.lr} --min-lr {args.min_lr}")
    if args.lr_warmup_iters < 0 or args.lr_warmup_iters > args.max_steps:
        bad(f"--lr-warmup-iters must be between 0 and --max-steps, got {args.lr_warmup_iters}")
    if args.save_interval is not None and args.save_interval < 1:
        bad(f"--save-interval must be at least 1, got {args.save_interval}")
    if args.save_interval and not args.save:
        bad("--save-interval needs --save DIR")
    if args.recompute_granularity not in (None, "full"):
        bad(f"--recompute-granularity: only 'full' is supported, got {args.recompute_granularity!r}")
    if args.recompute_granularity == "full":
        if args.recompute_method not in ("block", "uniform"):
            bad("--recompute-granularity full needs --recompute-method block|uniform")
        if args.recompute_num_layers < 1:
            bad("--recompute-granularity full needs --recompute-num-layers N (N >= 1)")
    elif args.recompute_method or args.recompute_num_layers:
        bad("--recompute-method / --recompute-num-layers need --recompute-granularity full")
    if args.bad_sample_budget < 0:
        bad(f"--bad-sample-budget must be at least 0, got {args.bad_sample_budget}")
    if args.image_decode not in ("cpu", "device", "auto"):
        bad(f"--image-decode must be cpu, device or auto, got {args.image_decode!r}")
    if args.overlong not in ("drop", "truncate"):
        bad(f"--overlong must be drop or truncate, got {args.overlong!r}")
    if not args.shards:
        bad("--shards is required")
    if args.ckpt_format not in (None, "torch", "torch_dcp"):
        bad(f"--ckpt-format must be torch or torch_dcp, got {args.ckpt_format!r}")
    if args.profile:
        validate_profile(args, world_size)


def validate_profile(args: TrainArgs, world_size: int) -> None:
    """--profile-step-start/-end inside the run, --profile-ranks among the ranks, and a folder for traces."""
    def bad(msg: str) -> None:
        raise InputError(None, msg)

    start, end = args.profile_step_start, args.profile_step_end
    if start < 1:
        bad(f"--profile-step-start must be at least 1 (iterations count from 1), got {start}")
    if end <= start:
        bad(f"--profile-step-end must be greater than --profile-step-start {start} (iterations "
            f"{start}..END-1 are profiled), got {end}")
    if start > args.max_steps:
        bad(f"--profile-step-start {start} is past --max-steps {args.max_steps}: nothing would be profiled")
    wrong = [r for r in args.profile_ranks if not 0 <= r < world_size]
    if wrong or not args.profile_ranks:
        bad(f"--profile-ranks {' '.join(map(str, args.profile_ranks))}: ranks run from 0 to {world_size - 1}")
    if not (args.tensorboard_dir or args.save):
        bad("--profile writes its trace under --tensorboard-dir (or --save): give one of them")


def cache_limit_bytes(text: str) -> int:
    """``--cache-limit`` in bytes (the syntax of ``--max-shard-bytes``: 10GB, 500MB, 512MiB)."""
    from mmdata.units import parse_size

    return parse_size(text, "--cache-limit")
