"""`mmdata shard --engine ray` on a 2-node local Ray cluster against `--engine local` on the same cores.

  .venv/bin/python benchmarks/bench_ray_shard.py [--records 600] [--records-per-shard 50] [--rounds 2] [--workdir DIR]

Input: bench_loader's LLaVA-like records over COCO-size 640x480 JPEGs (--max-res 448: every image is
resized and re-encoded). The cluster (ray.cluster_utils.Cluster: 2 nodes of 1 CPU) is started
first and its start is not counted; the local engine gets --workers 2 (the same 2 cores). Runs
alternate local / ray, each into a fresh folder; the outputs are checked byte-identical.
The first ray run also starts the Ray worker processes (reported apart).
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


def tree(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--records-per-shard", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-ray-shard-"))
    from fixtures.generate import generate_llava_scale

    src = work / "src"
    if not (src / "llava_scale.json").is_file():
        generate_llava_scale(src, n_records=a.records, n_images=max(50, a.records // 4), image_size=(640, 480),
                             seed=0, text_only_fraction=0.0)
    from ray.cluster_utils import Cluster

    from mmdata.shard.writer import write_shards

    t = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 << 20,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=80 << 20)
    started = time.perf_counter() - t
    kw = dict(max_res=448, samples_per_shard=a.records_per_shard)  # records per job (the one layout)

    def run(engine: str) -> tuple[float, Path]:
        out = Path(tempfile.mkdtemp(dir=work)) / "out"
        t0 = time.perf_counter()
        if engine == "local":
            write_shards(src / "llava_scale.json", src / "images", out, workers=2, **kw)
        else:
            write_shards(src / "llava_scale.json", src / "images", out, engine="ray", ray_address=cluster.address,
                         **kw)
        return time.perf_counter() - t0, out

    try:
        first_ray, ref = run("ray")
        times: dict[str, list[float]] = {"local": [], "ray": []}
        for _ in range(a.rounds):
            for engine in ("local", "ray"):
                s, out = run(engine)
                times[engine].append(s)
                assert tree(out) == tree(ref), f"{engine} output differs"
                shutil.rmtree(out.parent)
    finally:
        cluster.shutdown()
    lo, ry = min(times["local"]), min(times["ray"])
    print(f"{a.records} records -> {a.records // a.records_per_shard} shards of {a.records_per_shard} records, "
          f"--max-res 448; load {os.getloadavg()[0]:.2f}; cluster start {started:.1f} s (not counted)")
    print(f"  --engine local --workers 2      best {lo:6.2f} s   ({a.records / lo:6.1f} records/s)  runs "
          f"{', '.join(f'{x:.2f}' for x in times['local'])}")
    print(f"  --engine ray (2 nodes x 1 CPU)  best {ry:6.2f} s   ({a.records / ry:6.1f} records/s)  runs "
          f"{', '.join(f'{x:.2f}' for x in times['ray'])}; first ray run (starts workers) {first_ray:.2f} s")
    print(f"  ray overhead {100 * (ry / lo - 1):+.1f}% of local wall time; outputs byte-identical")


if __name__ == "__main__":
    main()
