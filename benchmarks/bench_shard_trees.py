"""`write_shards(..., workers=2)` of two source trees on the same data, alternated: wall clock and the
children's CPU time (for a before / after figure on a shared box: compare medians within one run).

Run: .venv/bin/python benchmarks/bench_shard_trees.py --base /tmp/base-tree --data DIR [--rounds 3]
(``--base``: another checkout, e.g. ``git archive COMMIT | tar -x -C /tmp/base-tree``; ``--data``:
a folder with records.json and images/, e.g. the one bench_shard.py --data keeps).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CODE = ("import sys, time; sys.path.insert(0, sys.argv[1]); from mmdata.shard import write_shards; "
        "t = time.perf_counter(); r = write_shards([sys.argv[2] + '/records.json'], sys.argv[2] + '/images', "
        "sys.argv[3], workers=2); print(r.images, time.perf_counter() - t)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    trees = {"base": a.base.resolve(), "new": Path(__file__).resolve().parents[1]}
    res: dict[str, list[tuple[float, float, int]]] = {k: [] for k in trees}
    for _ in range(a.rounds):
        for name, tree in trees.items():
            out = tempfile.mkdtemp(prefix="bench_trees_")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            p = subprocess.run([sys.executable, "-c", CODE, str(tree), str(a.data), out + "/o"], capture_output=True,
                               text=True, check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            n, wall = p.stdout.split()
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            res[name].append((float(wall), cpu, int(n)))
            shutil.rmtree(out)
            print(f"{name}: wall {float(wall):.2f} s, cpu {cpu:.2f} s, load {os.getloadavg()[0]:.2f}", flush=True)
    for name, v in res.items():
        w, c = sorted(x[0] for x in v)[len(v) // 2], sorted(x[1] for x in v)[len(v) // 2]
        print(f"{name}: median wall {w:.2f} s ({v[0][2] / w:.1f} images/s), median cpu {c:.2f} s")


if __name__ == "__main__":
    main()
