"""Benchmark `mmdata clean llava` (issue 2): three claims, each printed with how it was measured.

(a) text and structure checks: records/s of rules 1-4 alone, of parse + checks + serialisation per
    core, and of the whole `clean` on a text-only LLaVA file (JSON Lines and JSON array);
(b) the full clean of a LLaVA-style file (200,000 records over 20,000 images) is bound by image
    decoding: images/s per core next to a plain `PIL.Image.open(p).load()` loop over the same files;
(c) peak memory (main process and largest worker, RSS) of a 665,000-record input, as JSON Lines and
    as one JSON array, text-only and with images.

Run: .venv/bin/python benchmarks/bench_clean.py [--workdir /tmp/mmdata-bench-clean] [--quick]
Data come from fixtures.generate (photo-like JPEGs in COCO sizes; LLaVA-Instruct-like text).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.generate import (
    generate_llava_scale,
    jpeg_bytes,
    photo,
    write_llava_scale_text_only,
)
from mmdata.clean import clean_llava
from mmdata.clean.fastread import iter_raw_batches, iter_spans
from mmdata.clean.engine import StructureOptions, structure_span
from mmdata.procs import resolve_workers
from mmdata.records import normalize

COCO_SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (640, 360), (427, 640), (612, 612), (640, 512)]


def _cpu() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _check(rep, n: int) -> None:
    """Everything accounted for; the generator's only dirt is the odd repeated short sample."""
    assert rep.input == n and rep.written + rep.rejected == n, rep
    assert {k for k, v in rep.by_reason.items() if v} <= {"duplicate_sample"}, rep.by_reason


def _line(what: str, value: str, how: str) -> None:
    print(f"  {what:<58} {value:>16}   [{how}]", flush=True)


# ---- (a) ------------------------------------------------------------------------------------------

def bench_text(work: Path, n: int, workers: int) -> None:
    print(f"(a) text and structure checks, {n:,} text-only LLaVA records (1-5 rounds, ~60-word answers)")
    d = work / f"text-{n}"
    if not (d / "text_only.json").exists():
        write_llava_scale_text_only(d, n)
    paths = {"jsonl": d / "text_only.jsonl", "json": d / "text_only.json"}
    print(f"    files: {paths['jsonl']} ({paths['jsonl'].stat().st_size / 1e6:.0f} MB), json array alike")
    print(f"    load average at start: {_load()}")
    raw = [x for b in iter_raw_batches(paths["jsonl"], 1000) for x in b][:50_000]
    sample = [orjson.loads(x) for x in raw]

    def rules() -> None:
        for i, r in enumerate(sample):
            normalize(r, f"t-{i}")

    def parse() -> None:
        for x in raw:
            loads(x)

    def parse_rules() -> None:
        for x in raw:
            normalize(loads(x), "t")

    loads = orjson.loads  # results are dropped at once, as in a worker (no GC pressure from 50k kept results)
    dt = _best(rules)
    _line("rules 1-4 alone (normalize, parsed records)", f"{len(sample) / dt:,.0f} rec/s", "1 core, CPU time, best of 3")
    t_parse = _best(parse)
    t_both = _best(parse_rules)
    _line("rules 1-4 next to the parse (parse+rules minus parse)", f"{len(raw) / (t_both - t_parse):,.0f} rec/s",
          f"1 core, CPU time; parse+rules {len(raw) / t_both:,.0f} rec/s")
    spans = list(iter_spans(paths["jsonl"], 1000))[:50]
    m = sum(s.n for s in spans)
    t = time.process_time()
    first = 0
    for s in spans:
        structure_span(str(paths["jsonl"]), s, first, StructureOptions("t", "auto", False, False))
        first += s.n
    dt = time.process_time() - t
    _line("read + parse + rules 1-4 + serialise + key (worker task)", f"{m / dt:,.0f} rec/s", "1 core, CPU time")
    for name in ("jsonl", "json"):
        t = time.process_time()
        k = sum(s.n for s in iter_spans(paths[name], 1000))
        dt = time.process_time() - t
        _line(f"find record boundaries, {name} (main process)", f"{k / dt:,.0f} rec/s", "1 core, CPU time")
    empty = work / "no-images"
    empty.mkdir(exist_ok=True)
    for name in ("jsonl", "json"):
        for w in sorted({1, workers}):
            out = work / f"out-text-{name}-{w}.jsonl"
            t, c = time.perf_counter(), _cpu()
            rep = clean_llava(paths[name], empty, out, workers=w)
            wall, cpu = time.perf_counter() - t, _cpu() - c
            _check(rep, n)
            _line(f"whole clean, {name} in, --workers {w}", f"{n / wall:,.0f} rec/s",
                  f"wall {wall:.1f} s, CPU {cpu:.1f} s = {cpu / n * 1e6:.1f} us/rec")
    for name in ("jsonl", "json"):
        for w in sorted({1, workers}):
            cmd = [sys.executable, "-m", "mmdata.cli", "clean", "llava", str(paths[name]), "--images", str(empty),
                   "--out", str(work / f"out-cli-{name}-{w}.jsonl"), "--workers", str(w), "-q"]
            t, c = time.perf_counter(), _cpu()
            subprocess.run(cmd, check=True)
            wall, cpu = time.perf_counter() - t, _cpu() - c
            _line(f"the command `mmdata clean llava`, {name} in, --workers {w}", f"{n / wall:,.0f} rec/s",
                  f"wall {wall:.1f} s incl. start-up, CPU {cpu:.1f} s; load {_load()}")
    print(f"    load average at end: {_load()}")


def _best(fn, rounds: int = 3) -> float:
    """Least CPU time of ``rounds`` calls (the machine is shared: the least disturbed run)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- (b) ------------------------------------------------------------------------------------------

def make_scale(work: Path, n_records: int, n_images: int, seed: int = 0) -> dict[str, Path]:
    """generate_llava_scale with tiny pictures, then each pool file overwritten by one of 97 distinct
    photo-like JPEGs in COCO sizes (decoding cost is what matters; drawing 20k photos would take long)."""
    root = work / f"scale-{n_records}-{n_images}"
    marker = root / "done.json"
    if marker.exists():
        return {k: Path(v) for k, v in json.loads(marker.read_text()).items()}
    paths = generate_llava_scale(root, n_records=n_records, n_images=n_images, seed=seed, image_size=(32, 32))
    rng = np.random.default_rng(seed)
    pool = [jpeg_bytes(photo(rng, *COCO_SIZES[i % len(COCO_SIZES)]), quality=85) for i in range(97)]
    files = sorted(p for p in Path(paths["images"]).rglob("*.jpg"))
    for i, p in enumerate(files):
        p.write_bytes(pool[i % len(pool)])
    marker.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return paths


def bench_images(work: Path, n_records: int, n_images: int, workers: int) -> None:
    from PIL import Image

    from mmdata.clean.checks import check_paths

    print(f"(b) full clean, {n_records:,} records over {n_images:,} JPEGs (COCO sizes, ~0.3 MP), --workers {workers}")
    paths = make_scale(work, n_records, n_images)
    images = Path(paths["images"])
    files = sorted(str(p) for p in images.rglob("*.jpg"))
    for p in files:  # warm the page cache for everyone alike
        with open(p, "rb") as f:
            f.read()
    t = time.process_time()
    for p in files:
        with Image.open(p) as im:
            im.load()
    base = len(files) / (time.process_time() - t)
    _line("plain PIL.Image.open(p).load() loop", f"{base:,.0f} img/s/core", "1 process, CPU time")
    rel = [os.path.relpath(p, images) for p in files]
    t = time.process_time()
    check_paths(os.path.realpath(images), rel)
    ours1 = len(files) / (time.process_time() - t)
    _line("clean's image check alone (verify, DCT-scaled full decode)", f"{ours1:,.0f} img/s/core", "1 process, CPU time")
    out = work / "out-scale.jsonl"
    t, c = time.perf_counter(), _cpu()
    rep = clean_llava(paths["llava_jsonl"], images, out, workers=workers)
    wall, cpu = time.perf_counter() - t, _cpu() - c
    _check(rep, n_records)
    checked = rep.images_checked  # the distinct images the records use (a pool file may go unused)
    assert 0.99 * n_images <= checked <= n_images, rep
    per_core_wall = checked / wall / workers
    per_core_cpu = checked / cpu
    _line(f"whole clean: {checked:,} images checked per second", f"{checked / wall:,.0f} img/s",
          f"wall {wall:.1f} s, CPU {cpu:.1f} s")
    _line("whole clean: images/s per core (wall x workers)", f"{per_core_wall:,.0f} img/s/core",
          f"ratio to the plain load loop {per_core_wall / base:.2f}")
    _line("whole clean: images per CPU-second (all processes)", f"{per_core_cpu:,.0f} img/s/core",
          f"ratio {per_core_cpu / base:.2f}; records {n_records / wall:,.0f}/s")


# ---- (c) ------------------------------------------------------------------------------------------

def _child(args: list[str]) -> None:
    inp, images, out, workers = args
    rep = clean_llava(inp, images, out, workers=int(workers))
    # VmHWM: this address space's peak RSS (ru_maxrss would include the parent's, from before exec)
    me = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"main_kb": me, "worker_kb": kids, "input": rep.input, "written": rep.written}))


def _make_665k_with_images(work: Path, scale_jsonl: Path, n: int) -> dict[str, Path]:
    """n image-bearing records: the scale file repeated, each copy's ids and first question made unique."""
    d = work / f"img-{n}"
    out = {"jsonl": d / "records.jsonl", "json": d / "records.json"}
    if out["json"].exists():
        return out
    d.mkdir(parents=True, exist_ok=True)
    src = [orjson.loads(x) for x in scale_jsonl.read_bytes().splitlines()]
    with open(out["jsonl"], "wb") as fl, open(out["json"], "wb") as fa:
        fa.write(b"[\n")
        for i in range(n):
            r = dict(src[i % len(src)])
            copy = i // len(src)
            if copy:
                r["id"] = f"{r['id']}-c{copy}"
                conv = [dict(t) for t in r["conversations"]]
                conv[0]["value"] += f" (variant {copy})"
                r["conversations"] = conv
            line = orjson.dumps(r)
            fl.write(line + b"\n")
            fa.write(line + (b",\n" if i + 1 < n else b"\n"))
        fa.write(b"]\n")
    return out


def bench_memory(work: Path, n: int, scale: dict[str, Path], workers: int) -> None:
    print(f"(c) peak memory, {n:,} records, --workers {workers} (peak RSS: VmHWM of the main process, "
          f"getrusage for the largest worker)")
    text = work / f"text-{n}"
    if not (text / "text_only.json").exists():
        write_llava_scale_text_only(text, n)
    sets = {"text-only": ({"jsonl": text / "text_only.jsonl", "json": text / "text_only.json"}, work / "no-images"),
            "with images": (_make_665k_with_images(work, Path(scale["llava_jsonl"]), n), Path(scale["images"]))}
    (work / "no-images").mkdir(exist_ok=True)
    for label, (files, images) in sets.items():
        for fmt in ("jsonl", "json"):
            size = files[fmt].stat().st_size
            t = time.perf_counter()
            p = subprocess.run([sys.executable, __file__, "--_child", str(files[fmt]), str(images),
                                str(work / f"out-mem-{fmt}.jsonl"), str(workers)], capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t
            r = json.loads(p.stdout.strip().splitlines()[-1])
            assert r["input"] == n, r
            _line(f"{label}, {fmt} ({size / 1e9:.2f} GB)", f"{r['main_kb'] / 1024:,.0f} MB main",
                  f"largest worker {r['worker_kb'] / 1024:,.0f} MB; {n / wall:,.0f} rec/s incl. start-up")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        _child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mmdata-bench-clean"))
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--memory-records", type=int, default=665_000)
    ap.add_argument("--workers", type=int, default=None, help="default: all cores")
    ap.add_argument("--only", choices=["a", "b", "c"], action="append")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    args = ap.parse_args()
    if args.quick:
        args.records, args.images, args.memory_records = 5_000, 500, 12_000
    workers = resolve_workers(args.workers)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ["a", "b", "c"])
    print(f"mmdata clean benchmark: {os.cpu_count()} CPUs visible, --workers {workers}, data in {work}")
    if "a" in only:
        bench_text(work, args.records, workers)
    if "b" in only or "c" in only:
        scale = make_scale(work, args.records, args.images)
        if "b" in only:
            bench_images(work, args.records, args.images, workers)
        if "c" in only:
            bench_memory(work, args.memory_records, scale, workers)


if __name__ == "__main__":
    main()
