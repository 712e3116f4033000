"""Peak memory of `mmdata clean hf` (issue 11 item 4): constant in the parquet's size.

Writes LLaVA-OneVision-layout parquet files of N rows (photo-like noise JPEGs of ~100 KB embedded as
bytes, each made distinct by a trailer so the store gets N files), streamed with a ParquetWriter, then
runs the command in a child process per size and reports its peak RSS (the main process) and the
largest worker's, from getrusage. Sizes differ 8x; the read batch (--rows) stays the same.

Run: .venv/bin/python benchmarks/bench_clean_hf.py [--workdir /tmp/mmdata-bench-hf] [--rows 256]
     [--sizes 500,4000] [--row-group 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema([("id", pa.string()), ("image", IMAGE),
                    ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())])))])

_CHILD = """
import resource, sys, time
from mmdata.clean import clean_hf
t = time.perf_counter()
rep = clean_hf(sys.argv[1], sys.argv[2], rows=int(sys.argv[3]), workers=int(sys.argv[4]))
wall = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(rep.input, rep.written, me.ru_maxrss, kids.ru_maxrss, wall, me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime)
"""


def _bases(k: int = 16) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(k):
        a = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
        a = (a // 4 + np.linspace(0, 180, 400, dtype=np.uint8)[None, :, None]).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def write_parquet(path: Path, n: int, row_group: int) -> int:
    """N rows, written a row group at a time (the writer holds one group)."""
    bases = _bases()
    with pq.ParquetWriter(path, SCHEMA) as w:
        for start in range(0, n, row_group):
            rows = []
            for i in range(start, min(n, start + row_group)):
                data = bases[i % len(bases)] + i.to_bytes(8, "little")  # after EOI: decodes the same, new bytes
                rows.append({"id": f"r{i}", "image": {"bytes": data, "path": f"{i}.jpg"},
                             "conversations": [{"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
                                               {"from": "gpt", "value": "Noise over a gradient. " * 4}]})
            w.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), row_group_size=row_group)
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/mmdata-bench-hf")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--sizes", default="500,4000")
    ap.add_argument("--row-group", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"clean hf peak memory: --rows {args.rows}, row groups of {args.row_group}, --workers {args.workers}, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    for n in map(int, args.sizes.split(",")):
        src = work / f"ov-{n}.parquet"
        if not src.exists():
            write_parquet(src, n, args.row_group)
        out = work / f"out-{n}" / "c.jsonl"
        for p in (out.parent,):
            subprocess.run(["rm", "-rf", str(p)], check=True)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(out), str(args.rows), str(args.workers)],
                           cwd=ROOT, capture_output=True, text=True, check=True)
        rin, written, rss, kid, wall, cpu = r.stdout.split()
        store = sum(f.stat().st_size for f in (out.parent / "c.images").rglob("*") if f.is_file())
        print(json.dumps({"rows": n, "parquet_MB": round(src.stat().st_size / 1e6), "written": int(written),
                          "store_MB": round(store / 1e6), "peak_rss_main_MB": round(int(rss) / 1024),
                          "peak_rss_worker_MB": round(int(kid) / 1024), "wall_s": round(float(wall), 1),
                          "cpu_s": round(float(cpu), 1), "total_s": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
