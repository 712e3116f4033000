"""Checkpoint save / load under FSDP2: full-gather (`--ckpt-format torch`: every tensor gathered to
rank 0, which writes model.pt + optim.pt) against sharded DCP (`torch_dcp`: every rank writes its own
shards). Each (format, phase) runs in its own `torchrun` so peak host memory is measured alone.

    .venv/bin/python benchmarks/bench_checkpoint.py --model 100m --nproc 2 --dir /tmp/ckbench

Per rank: wall time of `mmtrain.checkpoint.save` / `restore_states`, and the rise of peak RSS during
it (VmHWM after the operation minus VmRSS before it, with the peak reset through /proc/self/clear_refs).
The model and AdamW state exist before the clock starts (one optimizer step on zero gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(model_name: str, fmt: str, phase: str, save: str, out: str) -> None:
    """One rank: build the FSDP2 model + AdamW state, then time one save or one load."""
    import torch
    import torch.distributed as dist

    from mmtrain import checkpoint as ckpt
    from mmtrain.accel import get_accel
    from mmtrain.model import build_model
    from mmtrain.run import wrap_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = build_model(model_name, 4096, 4000, accel=get_accel("cpu"))
    wrapped = wrap_model(model, get_accel("cpu"), world, fsdp=True)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-4)
    for p in wrapped.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dist.barrier()
    before = _status("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    if phase == "save":
        ckpt.save(save, 1, wrapped, model, opt, fsdp=True, fmt=fmt, rank=rank, state={"iteration": 1},
                  loader_state={})
    else:
        cp = ckpt.load_checkpoint(save, rank)
        ckpt.restore_states(cp, wrapped, model, opt, fsdp=True)
    dist.barrier()
    took = time.perf_counter() - t0
    rec = {"rank": rank, "seconds": took, "rss_before": before, "peak_rise": _status("VmHWM") - before}
    got: list = [None] * world
    dist.all_gather_object(got, rec)
    if rank == 0:
        Path(out).write_text(json.dumps(got))
    dist.destroy_process_group()


def launch(args, fmt: str, phase: str) -> list[dict]:
    save = Path(args.dir) / fmt
    out = Path(args.dir) / f"{fmt}.{phase}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           __file__, "--worker", args.model, fmt, phase, str(save), str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(*sys.argv[2:7])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="100m")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/ckbench")
    ap.add_argument("--skip", nargs="*", default=[], help="format.phase to leave out, e.g. torch.load (memory)")
    args = ap.parse_args()
    gib = 1 << 30
    for fmt in ("torch", "torch_dcp"):
        for phase in ("save", "load"):
            if f"{fmt}.{phase}" in args.skip:
                continue
            recs = launch(args, fmt, phase)
            size = sum(f.stat().st_size for f in (Path(args.dir) / fmt).rglob("*") if f.is_file())
            print(f"{args.model} {fmt:<9} {phase}: {max(r['seconds'] for r in recs):6.1f} s | peak RSS rise per rank "
                  + " ".join(f"{r['peak_rise'] / gib:.2f}" for r in recs) + " GiB | rss before "
                  + " ".join(f"{r['rss_before'] / gib:.2f}" for r in recs) + f" GiB | on disk {size / gib:.2f} GiB",
                  flush=True)


if __name__ == "__main__":
    main()
