"""`mmdata clean llava` end to end, in CPU time (issue 13 item 4: >= 100,000 records per CPU-second on
200,000 text-only records), this tree against a baseline tree, alternating, best of R rounds each.

Each run is the real command in a child process (`python -m mmdata.cli clean llava ... -q`), timed
with getrusage over the child and its workers, start-up included. A baseline tree is made with
`git archive COMMIT | tar -x -C DIR`.

Run: .venv/bin/python benchmarks/bench_clean_e2e.py --baseline /tmp/base [--n 200000] [--rounds 5]
     [--workers 1,2] [--formats jsonl,json] [--workdir /tmp/mmdata-bench-e2e]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.generate import write_llava_scale_text_only  # noqa: E402


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(tree: Path, src: Path, images: Path, out: Path, workers: int) -> float:
    """CPU seconds of one `mmdata clean llava` run from ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    c = _child_cpu()
    subprocess.run([sys.executable, "-m", "mmdata.cli", "clean", "llava", str(src), "--images", str(images),
                    "--out", str(out), "--workers", str(workers), "-q"], cwd=tree, env=env, check=True)
    return _child_cpu() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--formats", default="jsonl,json")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mmdata-bench-e2e"))
    args = ap.parse_args()
    d = args.workdir / f"text-{args.n}"
    if not (d / "text_only.json").exists():
        write_llava_scale_text_only(d, args.n)
    images = args.workdir / "no-images"
    images.mkdir(exist_ok=True)
    trees = {"baseline": args.baseline.resolve(), "this tree": ROOT}
    print(f"clean llava end to end, {args.n:,} text-only records, best of {args.rounds} alternating rounds; "
          f"load at start {os.getloadavg()[0]:.2f}", flush=True)
    for fmt in args.formats.split(","):
        for w in map(int, args.workers.split(",")):
            secs: dict[str, list[float]] = {k: [] for k in trees}
            outs = {}
            for _ in range(args.rounds):
                for name, tree in trees.items():
                    out = args.workdir / f"out-{name.replace(' ', '_')}-{fmt}-{w}.jsonl"
                    secs[name].append(run(tree, d / f"text_only.{fmt}", images, out, w))
                    outs[name] = out.read_bytes()
            same = outs["baseline"] == outs["this tree"]
            b, t = min(secs["baseline"]), min(secs["this tree"])
            rng = {k: f"{args.n / max(v):,.0f}-{args.n / min(v):,.0f}" for k, v in secs.items()}
            print(f"  {fmt:5s} --workers {w}: baseline {args.n / b:9,.0f} rec/CPU-s ({b:.2f} s; range {rng['baseline']}), "
                  f"this tree {args.n / t:9,.0f} rec/CPU-s ({t:.2f} s; range {rng['this tree']}): {b / t:.2f}x; "
                  f"OUT identical: {same}", flush=True)
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
