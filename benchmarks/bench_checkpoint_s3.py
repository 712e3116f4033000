"""Checkpoint save / load to object storage against a local folder, same model, same process (one rank).

    .venv/bin/python benchmarks/bench_checkpoint_s3.py --model 100m --repeat 2

The S3 endpoint is tests/s3_server.py's moto server on 127.0.0.1 (real HTTP, signatures checked), which
keeps objects in its own process's memory and copies the whole object on every ranged GET: a floor for
correctness-shaped S3, not a figure for AWS or MinIO. Wall and CPU seconds (this process) of
`mmtrain.checkpoint.save` and of `load_checkpoint` + `restore_states`; ratios S3 / local per format.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _state(model_name: str):
    import torch

    from mmtrain.accel import get_accel
    from mmtrain.model import build_model

    torch.manual_seed(0)
    model = build_model(model_name, 4096, 4000, accel=get_accel("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def one(where: str, fmt: str, model, opt, it: int) -> tuple[tuple[float, float], tuple[float, float]]:
    from mmtrain import checkpoint as ckpt

    save = _timed(lambda: ckpt.save(where, it, model, model, opt, fsdp=False, fmt=fmt, rank=0,
                                    state={"iteration": it}, loader_state={}))

    def load() -> None:
        cp = ckpt.load_checkpoint(where, 0)
        ckpt.restore_states(cp, model, model, opt, fsdp=False)

    return save, _timed(load)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="100m")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    import torch

    from s3_server import moto_s3

    torch.set_num_threads(1)
    model, opt = _state(args.model)
    n = sum(p.numel() for p in model.parameters())
    print(f"model {args.model}: {n / 1e6:.0f}M parameters, load average {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} cores", flush=True)
    tmp = tempfile.mkdtemp(prefix="ckpt-s3-bench.")
    try:
        with moto_s3() as server:
            os.environ.update(server.env())
            for fmt in ("torch", "torch_dcp"):
                for rep in range(args.repeat):
                    got = {}
                    for kind, where in (("local", f"{tmp}/{fmt}{rep}"), ("s3", f"s3://{server.bucket}/{fmt}{rep}")):
                        got[kind] = one(where, fmt, model, opt, rep + 1)
                    (ls, ll), (ss, sl) = got["local"], got["s3"]
                    print(f"{fmt:<9} run {rep + 1}: save local {ls[0]:.1f} s wall / {ls[1]:.1f} s cpu, s3 {ss[0]:.1f} / "
                          f"{ss[1]:.1f} (x{ss[0] / ls[0]:.1f} wall) | load local {ll[0]:.1f} / {ll[1]:.1f}, s3 "
                          f"{sl[0]:.1f} / {sl[1]:.1f} (x{sl[0] / ll[0]:.1f} wall)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
