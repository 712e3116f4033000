"""Claim: `mmdata inspect --verify` reads, hashes and fully decodes shards at N samples/s per core and
scales with --workers.

Builds 24 shards x 40 samples of 448x336 photo-like JPEGs (q90, ~60 KB; the documented shard format,
written by the inspect tests' kit), then times `verify_shards` with 1 and 2 worker processes: wall time and CPU time (this process and its
workers), since wall time on a shared machine says little.
Run: .venv/bin/python benchmarks/bench_inspect_verify.py [--shards 24] [--per-shard 40]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mmdata.inspect.verify import verify_shards  # noqa: E402
from test_inspect_kit import spec, write_dataset  # noqa: E402


def _cpu() -> float:
    """CPU seconds of this process and its finished children (robust to a busy shared machine)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=24)
    ap.add_argument("--per-shard", type=int, default=40)
    args = ap.parse_args()
    n = args.shards * args.per_shard
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "ds"
        write_dataset(out, [spec(i, [(448, 336)]) for i in range(n)], samples_per_shard=args.per_shard)
        mb = sum(p.stat().st_size for p in out.glob("*.tar")) / 1e6
        print(f"{args.shards} shards, {n} samples, {mb:.1f} MB")
        for workers in (1, 2):
            c0 = _cpu()
            t = time.perf_counter()
            problems = verify_shards([out], workers=workers)
            dt = time.perf_counter() - t
            cpu = _cpu() - c0
            assert problems == [], problems[:3]
            print(f"verify_shards(workers={workers}): {dt:.2f} s wall, {n / dt:,.0f} samples/s, {mb / dt:.1f} MB/s; "
                  f"{cpu:.2f} CPU-s = {n / cpu:,.0f} samples per CPU-second")


if __name__ == "__main__":
    main()
