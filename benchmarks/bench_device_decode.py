"""Loader throughput with the JPEG decode in the workers (``image_decode="cpu"``) or on the device ("device").

    .venv/bin/python benchmarks/bench_device_decode.py                  # CPU box: the "device" side is the CPU backend
    python benchmarks/bench_device_decode.py --device cuda --records 2000 --workers 4 --rounds 3   # a GPU (nvJPEG)
    scripts/device_check_decode.sh                                      # the one-command check for a lent GPU

Same shards for both modes (``bench_train.make_shards``: LLaVA-like records over 448x336 photos stored at
the qwen2vl size, 192 image tokens each). A pass is one epoch of ``PackedLoader(pixel_dtype="images",
seq_len 4096, --workers W)``, every row taken to the device as ``mmtrain run`` does (``to_device``: the
copy, the decode in device mode, the patch rows), synchronised at the end. Modes alternate, best pass
kept. Per mode: samples/s (wall) and per worker, loader-worker CPU seconds per sample (``RUSAGE_CHILDREN``
once the workers have exited), main-process CPU per sample (``to_device``, including nvJPEG's host-side
Huffman work), bytes per sample from the workers, and, over the first rows, whether everything but the
pixels is identical and how far the pixels are from the CPU path's (max and mean |difference|, levels).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from benchmarks.bench_train import make_shards

SAME_KEYS = ("input_ids", "labels", "position_ids", "cu_seqlens", "image_grid_thw")


def _cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize()


def one_pass(shards: Path, mode: str, workers: int, device: torch.device, decoder, seq_len: int,
             keep: int = 0) -> tuple[dict, list]:
    """One epoch in ``mode``; returns the figures and the first ``keep`` rows on the device."""
    from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
    from mmtrain.batch import to_device

    cfg = LoaderConfig(seq_len=seq_len, pixel_dtype="images", image_decode=mode, epochs=1, seed=0)
    loader = PackedLoader(str(shards), tokenizer=load_tokenizer(None), config=cfg, num_workers=workers)
    kept, samples, shipped = [], 0, 0
    c0, m0, t0 = _cpu_s(resource.RUSAGE_CHILDREN), _cpu_s(resource.RUSAGE_SELF), time.perf_counter()
    for row in loader:
        samples += len(row["sample_ids"])
        shipped += int((row["image_bytes"] if mode == "device" else row["images"]).numel())
        out = to_device(row, device, decoder)
        if len(kept) < keep:
            kept.append(({k: row[k] for k in SAME_KEYS}, out["pixel_values"]))
    _sync(device)
    wall = time.perf_counter() - t0
    main = _cpu_s(resource.RUSAGE_SELF) - m0
    loader.close()  # the workers exit and are reaped: their CPU time is in RUSAGE_CHILDREN now
    work = _cpu_s(resource.RUSAGE_CHILDREN) - c0 if workers else main
    return {"samples": samples, "wall_s": wall, "samples_per_s": samples / wall,
            "samples_per_s_per_worker": samples / wall / max(1, workers),
            "worker_cpu_ms_per_sample": 1e3 * work / samples, "main_cpu_ms_per_sample": 1e3 * main / samples,
            "kb_per_sample_from_workers": shipped / samples / 1e3}, kept


def compare(cpu_rows: list, dev_rows: list) -> dict:
    """Non-pixel keys identical? Pixel difference (uint8 patch rows, levels) device vs cpu decode."""
    same, mx, tot, n = True, 0, 0.0, 0
    for (a, pa), (b, pb) in zip(cpu_rows, dev_rows):
        same &= all(torch.equal(a[k], b[k]) for k in SAME_KEYS)
        d = (pa.to("cpu", torch.int16) - pb.to("cpu", torch.int16)).abs()
        mx, tot, n = max(mx, int(d.max()) if d.numel() else 0), tot + float(d.sum()), n + d.numel()
    return {"rows_compared": len(cpu_rows), "non_pixel_keys_identical": same, "pixel_max_abs_diff": mx,
            "pixel_mean_abs_diff": tot / max(1, n), "pixels_identical": mx == 0}


def pick(device_arg: str) -> tuple[torch.device, object, str]:
    """The device, the decoder device mode uses there, and what it is (the CPU backend on a CPU)."""
    from mmdata.loader import devdecode as dd

    kind = device_arg
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "npu":
        import torch_npu  # noqa: F401
    device = torch.device(kind)
    if kind == "cpu":
        return device, dd.CPU_DECODER, "CPU backend (libjpeg-turbo in the main process): no accelerator"
    dec, why = dd.find_decoder(device)
    if dec is None:
        return device, dd.CPU_DECODER, f"CPU backend, then copied to {kind}: {why}"
    return device, dec, dec.name


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | npu")
    ap.add_argument("--workdir", default="/tmp/bench_device_decode")
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shards = make_shards(work, a.records)
    device, decoder, what = pick(a.device)
    best: dict[str, dict] = {}
    kept: dict[str, list] = {}
    for r in range(a.rounds):
        for mode in ("cpu", "device"):
            fig, rows = one_pass(shards, mode, a.workers, device, decoder, a.seq_len, keep=8 if r == 0 else 0)
            kept.setdefault(mode, rows)
            b = best.get(mode)
            if b is None or fig["samples_per_s"] > b["samples_per_s"]:
                best[mode] = fig
            if b is not None:  # CPU figures: the lowest of the passes
                for k in ("worker_cpu_ms_per_sample", "main_cpu_ms_per_sample"):
                    best[mode][k] = min(best[mode][k], fig[k], b[k])
    res = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
           "device_decoder": what, "workers": a.workers, "records": a.records, "rounds": a.rounds,
           "load_avg": os.getloadavg(), "cpu": best["cpu"], "device_mode": best["device"],
           "parity": compare(kept["cpu"], kept["device"])}
    res["ratio_samples_per_s"] = best["device"]["samples_per_s"] / best["cpu"]["samples_per_s"]
    res["ratio_worker_cpu_per_sample"] = best["device"]["worker_cpu_ms_per_sample"] / best["cpu"]["worker_cpu_ms_per_sample"]
    _print(res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


def _print(res: dict) -> None:
    print(f"device {res['device']} {res['device_name']} | device-mode decoder: {res['device_decoder']} | "
          f"{res['workers']} loader worker(s), {res['records']} records, best of {res['rounds']} | load {res['load_avg']}")
    print("| image decode | samples/s | per worker | worker CPU ms/sample | main CPU ms/sample | kB/sample from workers |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, key in (("cpu (workers)", "cpu"), ("device", "device_mode")):
        f = res[key]
        print(f"| {name} | {f['samples_per_s']:.1f} | {f['samples_per_s_per_worker']:.1f} | "
              f"{f['worker_cpu_ms_per_sample']:.2f} | {f['main_cpu_ms_per_sample']:.2f} | {f['kb_per_sample_from_workers']:.1f} |")
    p = res["parity"]
    print(f"device / cpu: samples/s {res['ratio_samples_per_s']:.2f}x, worker CPU per sample "
          f"{res['ratio_worker_cpu_per_sample']:.2f}x | {p['rows_compared']} rows: non-pixel keys identical "
          f"{p['non_pixel_keys_identical']}, pixels max |diff| {p['pixel_max_abs_diff']}, mean {p['pixel_mean_abs_diff']:.4f}")


if __name__ == "__main__":
    main()
