"""The packed loader reading shards from an S3 endpoint with added latency, against local disk.

  .venv/bin/python benchmarks/bench_s3_loader.py [--records 1200] [--latency-ms 20] [--workers 2] [--workdir DIR]

Shards: bench_loader's LLaVA-like set (COCO-size sources, --max-res 448, 200 samples a shard).
Endpoint: benchmarks/s3_latency_server.py in this process (keep-alive, +latency per request).
Modes, each a full epoch at seq_len 4096, alternating rounds, best round kept (the box is shared):
  local          the folder on local disk (page cache warm)
  s3 cache       whole shards downloaded ahead of the plan into a fresh --cache-dir (cold cache)
  s3 ranges      the next 8 rows' samples fetched with 32 concurrent ranged GETs
  s3 naive       one blocking ranged GET per sample (what reading a remote tar sample by sample costs)
first batch = PackedLoader() + the first batch, with the lengths cache warm (the index is read each time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loader import make_llava_shards  # noqa: E402
from s3_latency_server import serve  # noqa: E402

SEQ = 4096


def one_epoch(path: str, tok, workers: int, lengths_cache: Path, limit: int | None = None,
              **kw) -> tuple[int, float, float]:
    """(samples, seconds to the first batch, seconds for the rest of the epoch or of ``limit`` rows)."""
    from mmdata.loader import LoaderConfig, PackedLoader

    t0 = time.perf_counter()
    ld = PackedLoader(path, tokenizer=tok, num_workers=workers,
                      config=LoaderConfig(seq_len=SEQ, epochs=1, cache_dir=str(lengths_cache), **kw))
    n = rows = 0
    first = None
    for b in ld:
        n += len(b["sample_ids"])
        rows += 1
        if first is None:
            first = time.perf_counter()
        if limit is not None and rows >= limit:
            break
    end = time.perf_counter()
    ld.close()
    return n, first - t0, end - first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1200)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-s3-loader-"))
    _, _, shards = make_llava_shards(work, a.records)
    root = work / "s3root"
    if not (root / "bkt" / "set").is_dir():
        shutil.copytree(shards, root / "bkt" / "set", copy_function=os.link,
                        ignore=shutil.ignore_patterns(".mmdata-cache"))
    srv = serve(root, 0, a.latency_ms)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{srv.server_address[1]}", AWS_ACCESS_KEY_ID="x",
                      AWS_SECRET_ACCESS_KEY="x", AWS_REGION="us-east-1")
    from mmdata.loader import load_tokenizer
    import mmdata.loader.remote as remote

    tok = load_tokenizer(None)
    url = "s3://bkt/set"
    lengths = work / "lengths"
    t = time.perf_counter()
    one_epoch(url, tok, 0, lengths, limit=1, remote_read="ranges")  # counts text tokens of the remote set once
    cold_open = time.perf_counter() - t

    def cache_mode():
        d = Path(tempfile.mkdtemp(dir=work))
        try:
            return one_epoch(url, tok, a.workers, lengths, remote_read="cache", shard_cache_dir=str(d))
        finally:
            shutil.rmtree(d)

    def naive():
        saved = remote.RANGE_THREADS, remote.ROWS_AHEAD
        remote.RANGE_THREADS, remote.ROWS_AHEAD = 1, 0
        try:
            return one_epoch(url, tok, a.workers, lengths, remote_read="ranges")
        finally:
            remote.RANGE_THREADS, remote.ROWS_AHEAD = saved

    modes = {"local": lambda: one_epoch(str(shards), tok, a.workers, lengths),
             "s3 cache": cache_mode,
             "s3 ranges": lambda: one_epoch(url, tok, a.workers, lengths, remote_read="ranges"),
             "s3 naive": naive}
    best: dict[str, tuple[int, float, float]] = {}
    for _ in range(a.rounds):
        for name, fn in modes.items():
            r = fn()
            if name not in best or r[1] + r[2] < sum(best[name][1:]):
                best[name] = r
    print(f"{a.records} records, {len(list(shards.glob('*.tar')))} shards, seq_len {SEQ}, {a.workers} workers, "
          f"+{a.latency_ms:.0f} ms per request; load {os.getloadavg()[0]:.2f}; first open of the remote set "
          f"(its text tokens counted over the network) to the first batch {cold_open:.2f} s")
    base = best["local"][0] / best["local"][2]
    for name, (n, first, rest) in best.items():
        rate = n / (first + rest)
        steady = n / rest if rest else float("nan")
        print(f"  {name:<10} first batch {first:6.2f} s   {rate:7.1f} samples/s whole epoch   "
              f"{steady:7.1f} after the first batch   ({steady / base:.2f}x local)")


if __name__ == "__main__":
    main()
