"""The `mmtrain` command: `mmtrain run` parses CONTRACT s.5's flags (plus Megatron / MindSpeed-MM ones)
and calls `mmtrain.run.train`. User errors print one line and exit 2, with no traceback."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import typer

from mmdata.errors import MMDataError
from mmdata.usage import run_app

app = typer.Typer(name="mmtrain", help="Train a Qwen2-VL-shaped model on mmdata's packed shards (NPU / CUDA / CPU).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """mmtrain: packed vision-language training; see docs/train.md."""


@app.command("run")
def run_cmd(
    shards: list[str] = typer.Option(..., "--shards", help="Shard folder(s) written by `mmdata shard` (repeat for several)."),
    tokenizer: str | None = typer.Option(None, help="Local HF tokenizer.json or folder; default: the shipped one."),
    model: str = typer.Option("tiny", help="tiny | 100m | 0.5b | 1b | 2b, or a local Hugging Face Qwen2-VL / "
                              "Qwen2.5-VL folder (its weights, tokenizer and template)."),
    seq_len: int = typer.Option(2048, help="Tokens per packed row (one sample)."),
    micro_batch_size: int = typer.Option(1, help="Packed rows per micro-batch (concatenated into one THD row)."),
    global_batch_size: int = typer.Option(8, help="Packed rows per iteration, over all data-parallel ranks."),
    max_steps: int = typer.Option(100, help="Total iterations of the run, counted across resumes."),
    lr: float = typer.Option(1e-4, help="Peak learning rate."),
    min_lr: float = typer.Option(0.0, help="Learning rate at the end of the cosine decay."),
    lr_warmup_iters: int = typer.Option(0, help="Linear warmup iterations."),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay (not on biases and norms)."),
    adam_beta1: float = typer.Option(0.9),
    adam_beta2: float = typer.Option(0.999),
    clip_grad: float = typer.Option(1.0, help="Gradient-norm clip (0 = off)."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast."),
    recompute_granularity: str | None = typer.Option(None, help="full (activation recompute)."),
    recompute_method: str | None = typer.Option(None, help="block | uniform."),
    recompute_num_layers: int = typer.Option(0, help="Layers recomputed (block) or per group (uniform)."),
    use_flash_attn: bool = typer.Option(False, "--use-flash-attn", help="Fused varlen attention (NPU fusion / flash-attn)."),
    use_fused_rmsnorm: bool = typer.Option(False, "--use-fused-rmsnorm"),
    use_fused_swiglu: bool = typer.Option(False, "--use-fused-swiglu"),
    attn_impl: str | None = typer.Option(None, help="Force an attention path: npu_fusion | flash_attn | torch_varlen | sdpa_doc | sdpa_mask."),
    template: str = typer.Option("qwen2vl", help="Chat template of the loader."),
    bad_sample_budget: int = typer.Option(0, "--bad-sample-budget", help="Samples the run may skip (unreadable, "
                                          "or cut off a truncated shard) before it stops; 0: any is an error."),
    overlong: str = typer.Option("drop", help="Samples longer than --seq-len: drop (default) or truncate "
                                 "(cut the text, never an image)."),
    num_workers: int = typer.Option(2, help="Loader worker processes per rank."),
    log_interval: int = typer.Option(10),
    save: str | None = typer.Option(None, help="Checkpoint folder."),
    save_interval: int | None = typer.Option(None, help="Save every N iterations (and always at the end)."),
    load: str | None = typer.Option(None, help="Resume from the latest checkpoint in this folder."),
    exit_interval: int | None = typer.Option(None, help="Save (with --save) and exit when the iteration is a multiple of N."),
    device: str = typer.Option("auto", help="auto | npu | cuda | cpu."),
    seed: int = typer.Option(0),
    tensorboard_dir: str | None = typer.Option(None, help="Write TensorBoard scalars here."),
    metrics: str | None = typer.Option(None, help="Append one JSON object per log line to this file."),
    fsdp: bool = typer.Option(False, "--fsdp", help="FSDP2 instead of DDP under torchrun."),
    freeze: list[str] = typer.Option([], "--freeze", help="Keep vision, merger and/or llm fixed (comma separated "
                                     "or repeated; stage 1 of LLaVA / MindSpeed-MM: --freeze vision,llm)."),
    save_hf: str | None = typer.Option(None, "--save-hf", help="At the end, write the weights as a Hugging Face folder here."),
    ckpt_format: str | None = typer.Option(None, help="torch (full tensors, rank 0) | torch_dcp (sharded, every "
                                           "rank; resumable on any number of ranks). Default: torch_dcp with --fsdp."),
    profile: bool = typer.Option(False, "--profile", help="Profile iterations --profile-step-start..end-1."),
    profile_step_start: int = typer.Option(10, help="First profiled iteration."),
    profile_step_end: int = typer.Option(12, help="Profiling stops before this iteration."),
    profile_ranks: list[int] = typer.Option([0], help="Ranks to profile (repeat: --profile-ranks 0 --profile-ranks 1)."),
    tensor_model_parallel_size: int = typer.Option(1, help="Split each decoder layer over N ranks (DTensor TP); "
                                                   "data parallelism runs over world / N."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="Local cache: shards read from s3://, and the loader's length/plan caches under derived/ (default: $MMDATA_CACHE or ~/.cache/mmdata; never the --shards folder)."),
    cache_limit: str = typer.Option("10GB", "--cache-limit", help="At most this many bytes under --cache-dir, partial downloads included."),
    image_decode: str = typer.Option("cpu", "--image-decode", help="cpu (the loader workers decode JPEGs) | device "
                                     "(the workers ship JPEG bytes, the GPU decodes them: nvJPEG; NPU: DVPP) | auto "
                                     "(device when it has a decoder); no decoder: cpu, with one log line."),
) -> None:
    """Stream the shards through the sequence-packed loader into a vision-language model and train it."""
    from mmtrain.args import TrainArgs, check_shards, validate

    args = TrainArgs(**{k: v for k, v in locals().items() if k not in ("TrainArgs", "check_shards", "validate")})
    args.shards = list(shards)
    args.freeze = list(freeze)
    args.profile_ranks = list(profile_ranks)
    validate(args, int(os.environ.get("WORLD_SIZE", "1")))  # before torch is imported: fast errors
    check_shards(args.shards)
    from mmtrain.preflight import check_load_source, check_save_dir, check_shard_files

    check_shard_files(args.shards)  # every listed shard there at its size: found now, not mid-run
    if args.save:
        check_save_dir(args.save, int(os.environ.get("RANK", "0")))
    if args.load:
        check_load_source(args.load)
    import torch.distributed as dist

    from mmtrain.run import train

    try:
        train(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@app.command("export")
def export_cmd(
    ckpt_dir: str = typer.Argument(..., help="A checkpoint folder of `mmtrain run --save`."),
    hf_out: str = typer.Option(..., "--hf", help="Write the Hugging Face folder here."),
    iteration: int | None = typer.Option(None, help="Iteration to export (default: the latest)."),
) -> None:
    """Write a checkpoint as a Hugging Face folder (config, safetensors, tokenizer, processor, chat template)."""
    from mmtrain.export import export

    it, out = export(ckpt_dir, hf_out, iteration)
    typer.echo(f"exported iteration {it} of {ckpt_dir} to {out}", err=True)


@app.command("generate")
def generate_cmd(
    model: str = typer.Option(..., help="A Hugging Face Qwen2-VL / Qwen2.5-VL folder or a `run --save` folder."),
    image: list[str] = typer.Option([], "--image", help="Image file (repeat for several; in order)."),
    prompt: str = typer.Option(..., help="The user's text, after the images."),
    max_new_tokens: int = typer.Option(128, help="Stop after this many new tokens."),
    device: str = typer.Option("auto", help="auto | npu | cuda | cpu."),
) -> None:
    """Greedy answer of the model to one user turn (images, then the prompt); only the answer goes to stdout."""
    if max_new_tokens < 1:
        raise MMDataError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    from mmtrain.generate import generate

    text, _ = generate(model, list(image), prompt, max_new_tokens, device)
    typer.echo(text)


def _exit_now(code: int) -> None:
    """Leave at once after a user error: nothing is left to flush but stdio, and no native thread can
    then abort the interpreter's exit ("terminate called without an active exception", SIGABRT instead
    of exit 2). The cause seen (an Arrow pool worker releasing the index's bytes) is fixed at its source
    in `mmdata.format.index.read_table`; this stays as a guard for libraries that do the same."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def leave_distributed_run(code: int = 0) -> None:
    """End a process that ran torch.distributed, after its process group is destroyed and its files are
    closed. DDP keeps gloo's worker threads (and the tensors they hold) alive past
    ``destroy_process_group()``; when they release those tensors during the interpreter's exit they take
    the GIL and CPython ends them mid-unwind, which aborts the process (SIGABRT, "terminate called
    without an active exception": pytorch/pytorch#179291), so torchrun reports a finished run as failed.
    Leaving with os._exit after flushing stdio skips only that teardown."""
    _exit_now(code)


@app.command("doctor")
def doctor_cmd(
    shards: list[str] = typer.Option([], "--shards", help="Shard folder(s) to check (quick form of inspect --verify)."),
    save: str | None = typer.Option(None, help="Checkpoint folder: write access and free space."),
    nnodes: int = typer.Option(1, help="Nodes of the run (> 1: pdsh and passwordless ssh are checked)."),
    nproc_per_node: int | None = typer.Option(None, help="Ranks per node (default: one per visible device)."),
    hostfile: str | None = typer.Option(None, help="One node per line: try passwordless ssh to each."),
    model: str = typer.Option("tiny", help="Preset (or HF folder) the run trains, for the fit and memory checks."),
    tokenizer: str | None = typer.Option(None, help="As in `mmtrain run` (its vocabulary sizes the estimate)."),
    seq_len: int = typer.Option(2048),
    micro_batch_size: int = typer.Option(1),
    recompute_granularity: str | None = typer.Option(None, help="full"),
    recompute_method: str | None = typer.Option(None, help="block | uniform"),
    recompute_num_layers: int = typer.Option(0),
    fsdp: bool = typer.Option(False, "--fsdp"),
    bf16: bool = typer.Option(False, "--bf16"),
    device: str = typer.Option("auto", help="auto | npu | cuda | cpu."),
    timeout: float = typer.Option(30.0, help="Seconds the backend all-reduce may take."),
) -> None:
    """Check what breaks runs before they start: one line per check (ok / warn / FAIL + the fix); exit 1 on FAIL."""
    from mmtrain.doctor import DoctorArgs, doctor

    a = DoctorArgs(**{k: v for k, v in locals().items() if k not in ("DoctorArgs", "doctor")})
    a.shards = list(shards)
    raise typer.Exit(doctor(a, lambda line: print(line, flush=True)))


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        rc = run_app(app, "mmtrain", expand_multi(sys.argv[1:], ("--profile-ranks",)))
        if rc:  # a command's typer.Exit(code) comes back as the return value here
            sys.exit(rc)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: see leave_distributed_run
            leave_distributed_run(0)
    except MMDataError as e:
        typer.echo(f"error: {e}", err=True)
        _exit_now(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


def expand_multi(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """Megatron's `--profile-ranks 0 1 2` (several values after one flag) as typer's repeated flag."""
    out: list[str] = []
    flag = None
    for a in argv:
        if a in flags:
            flag = a
        elif flag and a.lstrip("-").isdigit() and not a.startswith("--"):
            if out[-1] != flag:
                out.append(flag)
            out.append(a)
            continue
        else:
            flag = None
        out.append(a)
    return out


if __name__ == "__main__":
    main()
