"""Claim: `mmdata inspect` summarises a 10,000-shard data set from index.parquet + manifest.json alone,
in seconds and bounded memory, without opening a tar.

Builds a synthetic data set (10,000 shards x --per-shard samples; index rows with the writer's schema
and realistic distributions; the tars are sparse files of the manifest's size, so reading one would show
up as zeros and a garbage summary), then times `inspect_shards` in a fresh process and reports its peak RSS.
Run: .venv/bin/python benchmarks/bench_inspect_summary.py [--shards 10000] [--per-shard 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def build(root: Path, shards: int, per_shard: int) -> int:
    n = shards * per_shard
    rng = np.random.default_rng(0)
    k = np.arange(n)
    w = rng.choice([448, 336, 224, 420, 252], n).astype(np.int32)
    h = rng.choice([448, 336, 252, 280, 196], n).astype(np.int32)
    tok = ((w // 28) * (h // 28)).astype(np.int32)
    names = [f"shard-{i:06d}.tar" for i in range(shards)]
    sidx = (k // per_shard).astype(np.int32)
    table = pa.table({
        "key": pa.array([f"{i:09d}" for i in k]),
        "shard": pa.DictionaryArray.from_arrays(pa.array(sidx), pa.array(names)).cast(pa.string()),
        "shard_idx": pa.array(sidx),
        "offset": pa.array((k % per_shard) * 60_000, pa.int64()),
        "nbytes": pa.array(np.full(n, 60_000), pa.int64()),
        "id": pa.array([str(i) for i in k]),
        "n_images": pa.array(np.ones(n, np.int16)),
        "image_tokens": pa.array(tok),
        "image_tokens_list": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), pa.array(tok)),
        "widths": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), pa.array(w)),
        "heights": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), pa.array(h)),
        "text_chars": pa.array(rng.lognormal(5, 1, n).astype(np.int32)),
        "n_turns": pa.array(np.full(n, 2, np.int16)),
        "source": pa.array(rng.choice(["coco", "llava", "sharegpt4v"], n)),
    })
    pq.write_table(table, root / "index.parquet", compression="zstd", row_group_size=1 << 20)
    size = per_shard * 60_000 + 10240
    for name in names:
        with open(root / name, "wb") as f:
            f.truncate(size)  # sparse: costs no disk, and is never read by the summary
    manifest = {"format": "mmdata.shards", "version": 1, "created_by": "bench",
                "options": {"rule": "qwen2vl", "max_res": 448, "max_image_tokens": 1280},
                "samples": n, "rejected": 0, "image_tokens": int(tok.sum()),
                "shards": [{"name": nm, "samples": per_shard, "bytes": size, "sha256": "0" * 64,
                            "first_key": f"{i * per_shard:09d}", "last_key": f"{(i + 1) * per_shard - 1:09d}"}
                           for i, nm in enumerate(names)]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return n


MEASURE = """
import resource, sys, time
t = time.perf_counter()
from mmdata.inspect.stats import inspect_shards
s = inspect_shards([sys.argv[1]])
dt = time.perf_counter() - t
assert s["errors"] == [], s["errors"][:3]
ru = resource.getrusage(resource.RUSAGE_SELF)
print(s["samples"], s["shards"], s["image_tokens"]["p50"], f"{dt:.2f}", f"{ru.ru_utime + ru.ru_stime:.2f}", ru.ru_maxrss // 1024)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--per-shard", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        t = time.perf_counter()
        n = build(root, args.shards, args.per_shard)
        print(f"built {args.shards:,} shards / {n:,} index rows in {time.perf_counter() - t:.1f} s")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        out = subprocess.run([sys.executable, "-c", MEASURE, str(root)], capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(out.stderr)
        samples, shards, p50, secs, cpu, rss = out.stdout.split()
        print(f"inspect_shards: {int(samples):,} samples, {int(shards):,} shards, p50 image tokens {p50}: "
              f"{secs} s wall, {cpu} CPU-s (process total, imports included), peak RSS {rss} MB, 0 tar bytes read")


if __name__ == "__main__":
    main()
