"""Profiling a few iterations with Megatron's flags (`--profile --profile-step-start N --profile-step-end M
--profile-ranks 0 1`): torch.profiler (torch_npu.profiler on NPU, whose traces msprof / MindStudio read)
records iterations N..M-1 on the chosen ranks, writes a trace TensorBoard opens, and logs a short table:
top operators by device time and the shares of matmul, attention, data wait and the optimizer."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MATMUL = re.compile(r"^aten::(_?mm|addmm|bmm|baddbmm|matmul|linear|_scaled_mm|addmv|mv)$|gemm|matmul|cublas")
ATTENTION = re.compile(r"attention|flash|sdpa|_efficient_attention|fusion_attn")
TOP = 8


def profile_dir(args: Any) -> Path:
    """Where traces go: `--tensorboard-dir/profile`, else `--save/profile` (TensorBoard opens either)."""
    return Path(args.tensorboard_dir or args.save) / "profile"


class NoProfiler:
    """The default: every hook does nothing."""

    active = False

    def before(self, iteration: int) -> None: ...

    def after(self, iteration: int, wall_s: float, data_s: float) -> None: ...

    def region(self, name: str):
        return contextlib.nullcontext()

    def close(self) -> None: ...


class StepProfiler(NoProfiler):
    """Starts the profiler before iteration `start`, stops it after iteration `end - 1`."""

    def __init__(self, start: int, end: int, out_dir: Path, kind: str, rank: int, say: Callable[[str], None]):
        self.start, self.end, self.out_dir, self.kind, self.rank, self.say = start, end, out_dir, kind, rank, say
        self.prof = None
        self.wall = self.data = 0.0
        self.steps = 0

    @property
    def active(self) -> bool:  # type: ignore[override]
        return self.prof is not None

    def before(self, iteration: int) -> None:
        if iteration == self.start:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.prof = _open_profiler(self.kind, self.out_dir, self.rank)
            self.prof.start()

    def region(self, name: str):
        if self.prof is None:
            return contextlib.nullcontext()
        from torch.profiler import record_function

        return record_function(name)

    def after(self, iteration: int, wall_s: float, data_s: float) -> None:
        if self.prof is None:
            return
        self.wall += wall_s
        self.data += data_s
        self.steps += 1
        if iteration >= self.end - 1:
            self._finish()

    def close(self) -> None:
        if self.prof is not None:  # the run ended inside the window
            self._finish()

    def _finish(self) -> None:
        t0 = time.perf_counter()
        prof, self.prof = self.prof, None
        prof.stop()  # writes the trace through on_trace_ready
        head = (f"profile rank {self.rank}: iterations {self.start}-{self.start + self.steps - 1} "
                f"({self.steps} steps, {1000 * self.wall:.1f} ms); trace in {self.out_dir} "
                f"(`tensorboard --logdir {self.out_dir.parent}`), written in {time.perf_counter() - t0:.1f} s")
        self.say(head)
        try:
            lines = summary_table(prof, self.kind, self.wall, self.data)
        except Exception as e:  # a profiler build without key_averages (e.g. some torch_npu versions)
            lines = [f"  (no operator table: {type(e).__name__}: {e})"]
        for line in lines:
            self.say(line)


def _open_profiler(kind: str, out_dir: Path, rank: int):
    """torch.profiler on CPU / CUDA, torch_npu.profiler on NPU, both writing a TensorBoard trace."""
    if kind == "npu":
        import torch_npu

        p = torch_npu.profiler
        acts = [p.ProfilerActivity.CPU, p.ProfilerActivity.NPU]
        return p.profile(activities=acts, record_shapes=True, with_stack=False,
                         on_trace_ready=p.tensorboard_trace_handler(str(out_dir)))
    import torch.profiler as tp

    acts = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if kind == "cuda" else [])
    return tp.profile(activities=acts, record_shapes=True,
                      on_trace_ready=tp.tensorboard_trace_handler(str(out_dir), worker_name=f"rank{rank}"))


def _device_us(ev: Any, kind: str) -> float:
    """Self time of an operator on the device (on CPU: on the host)."""
    if kind == "cpu":
        return float(ev.self_cpu_time_total)
    return float(getattr(ev, "self_device_time_total", 0.0) or getattr(ev, "self_cuda_time_total", 0.0))


def summary_table(prof: Any, kind: str, wall_s: float, data_s: float) -> list[str]:
    """Shares of matmul / attention (of operator device time) and data wait / optimizer (of step time),
    then the top operators by device time."""
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    ops = [(e.key, _device_us(e, kind), e.count) for e in events if e.key not in ("data_wait", "optimizer")]
    total = sum(us for _, us, _ in ops) or 1.0
    mm = sum(us for k, us, _ in ops if MATMUL.search(k.lower()))
    att = sum(us for k, us, _ in ops if ATTENTION.search(k.lower()))
    opt = next((e for e in events if e.key == "optimizer"), None)
    opt_us = 0.0 if opt is None else float(opt.cpu_time_total if kind == "cpu" else
                                           max(opt.cpu_time_total, getattr(opt, "device_time_total", 0.0)))
    wall_us = max(1.0, wall_s * 1e6)
    lines = [f"  matmul {100 * mm / total:.1f}% | attention {100 * att / total:.1f}% of operator time | "
             f"data wait {100 * data_s * 1e6 / wall_us:.1f}% | optimizer {100 * opt_us / wall_us:.1f}% of step time",
             f"  {'operator':<44} {'device ms' if kind != 'cpu' else 'self ms':>10} {'share':>7} {'calls':>7}"]
    for k, us, n in sorted(ops, key=lambda o: -o[1])[:TOP]:
        lines.append(f"  {k[:44]:<44} {us / 1000:>10.2f} {100 * us / total:>6.1f}% {n:>7d}")
    return lines


def make_profiler(args: Any, rank: int, accel: Any, say: Callable[[str], None]) -> NoProfiler:
    """The profiler for this rank: a StepProfiler with --profile on one of --profile-ranks, else a no-op."""
    if not getattr(args, "profile", False) or rank not in (args.profile_ranks or [0]):
        return NoProfiler()
    return StepProfiler(args.profile_step_start, args.profile_step_end, profile_dir(args), accel.kind, rank, say)
