"""Tiny shard sets in the documented format (docs/DESIGN.md "Shard format") for loader tests.

Written with ``tarfile`` (ustar, members sorted, mtime 0) + pyarrow, independent of ``mmdata.shard``,
so the loader is tested against the format itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmdata.models.rules import smart_resize

WORDS = ("red car blue sky dog runs fast small house tree green field people walking street "
         "a the on in with near of large bright dark water boat table chair").split()


def picture(width: int, height: int, seed: int) -> bytes:
    """A deterministic JPEG with some structure (gradients + blocks)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)),
                     ((x + y) * 127 // max(1, width + height))], axis=-1).astype(np.int32)
    base += rng.integers(0, 60, size=(1, 1, 3))
    arr = np.clip(base, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_records(n: int, seed: int = 0, max_images: int = 1, sizes=((56, 56), (84, 56), (56, 112), (112, 84)),
                 text_words=(3, 40), text_only_every: int = 0) -> list[dict]:
    """Synthetic LLaVA records; record ``i`` has 1..max_images images (0 when ``i % text_only_every == 0``)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(1, max_images + 1))
        if text_only_every and i % text_only_every == 0:
            k = 0
        q = " ".join(rng.choice(WORDS, int(rng.integers(*text_words))))
        a = " ".join(rng.choice(WORDS, int(rng.integers(*text_words))))
        rec = {"id": f"s{seed}-{i}", "conversations": [
            {"from": "human", "value": "<image>\n" * k + q},
            {"from": "gpt", "value": a}]}
        if k:
            picks = [sizes[int(rng.integers(len(sizes)))] for _ in range(k)]
            rec["image"] = [f"img{i}_{j}.jpg" for j in range(k)] if k > 1 else f"img{i}.jpg"
            rec["_sizes"] = picks
        out.append(rec)
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(outdir: str | Path, records: list[dict], samples_per_shard: int = 4, max_image_tokens: int = 1280,
                 start: int = 0, source: str = "synthetic", corrupt: dict | None = None) -> Path:
    """Write ``records`` as shards + index.parquet + manifest.json. ``corrupt`` maps a sample number
    to a damage kind: "json" (broken json), "image" (undecodable image bytes), "tokens" (json claims
    a wrong image_tokens)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    corrupt = corrupt or {}
    rows = {c: [] for c in ("key", "shard", "shard_idx", "offset", "nbytes", "id", "n_images", "image_tokens",
                            "image_tokens_list", "widths", "heights", "text_chars", "n_turns", "source")}
    shards_meta = []
    total_tokens = 0
    max_pixels = max_image_tokens * 28 * 28
    for s0 in range(0, len(records), samples_per_shard):
        sidx = s0 // samples_per_shard
        name = f"shard-{sidx:06d}.tar"
        buf = io.BytesIO()
        offsets = []
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for j, rec in enumerate(records[s0:s0 + samples_per_shard]):
                n = start + s0 + j
                key = f"{n:09d}"
                offsets.append(buf.tell())
                rec = dict(rec)
                sizes = rec.pop("_sizes", [])
                metas, blobs = [], []
                for k, (w, h) in enumerate(sizes):
                    hh, ww = smart_resize(h, w, 28, 56 * 56, max_pixels)
                    t = (hh // 28) * (ww // 28)
                    if corrupt.get(n) == "tokens":
                        t += 1
                    metas.append({"width": w, "height": h, "orig_width": w * 2, "orig_height": h * 2,
                                  "image_tokens": t, "passthrough": False})
                    data = picture(w, h, seed=n * 10 + k)
                    if corrupt.get(n) == "image":
                        data = data[:20] + b"\0" * 50
                    blobs.append(data)
                rec["images"] = metas
                rec["image_tokens"] = sum(m["image_tokens"] for m in metas)
                js = orjson.dumps(rec)
                if corrupt.get(n) == "json":
                    js = js[:-5]
                _add(tar, f"{key}.json", js)
                if len(blobs) == 1:
                    _add(tar, f"{key}.jpg", blobs[0])
                else:
                    for k, b in enumerate(blobs):
                        _add(tar, f"{key}.{k}.jpg", b)
                toks = [m["image_tokens"] for m in metas]
                if corrupt.get(n) == "tokens":
                    toks = [t - 1 for t in toks]  # the index keeps the true count: json and index disagree
                rows["key"].append(key)
                rows["shard"].append(name)
                rows["shard_idx"].append(sidx)
                rows["id"].append(rec["id"])
                rows["n_images"].append(len(metas))
                rows["image_tokens"].append(sum(toks))
                rows["image_tokens_list"].append(toks)
                rows["widths"].append([m["width"] for m in metas])
                rows["heights"].append([m["height"] for m in metas])
                rows["text_chars"].append(sum(len(t["value"].replace("<image>", "")) for t in rec["conversations"]))
                rows["n_turns"].append(len(rec["conversations"]))
                rows["source"].append(source)
                total_tokens += sum(toks)
            end = buf.tell()
        data = buf.getvalue()
        bounds = offsets + [end]
        rows["offset"].extend(offsets)
        rows["nbytes"].extend(bounds[i + 1] - bounds[i] for i in range(len(offsets)))
        (out / name).write_bytes(data)
        shards_meta.append({"name": name, "samples": len(offsets), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest(),
                            "first_key": f"{start + s0:09d}", "last_key": f"{start + s0 + len(offsets) - 1:09d}"})
    schema = pa.schema([("key", pa.string()), ("shard", pa.string()), ("shard_idx", pa.int32()),
                        ("offset", pa.int64()), ("nbytes", pa.int64()), ("id", pa.string()),
                        ("n_images", pa.int16()), ("image_tokens", pa.int32()),
                        ("image_tokens_list", pa.list_(pa.int32())), ("widths", pa.list_(pa.int32())),
                        ("heights", pa.list_(pa.int32())), ("text_chars", pa.int32()), ("n_turns", pa.int16()),
                        ("source", pa.string())])
    pq.write_table(pa.table(rows, schema=schema), out / "index.parquet")
    manifest = {"format": "mmdata.shards", "version": 1, "created_by": "tests",
                "options": {"rule": "qwen2vl", "max_res": 448, "max_image_tokens": max_image_tokens, "quality": 90,
                            "samples_per_shard": samples_per_shard, "max_shard_bytes": None, "inputs": ["x.json"]},
                "samples": len(records), "rejected": 0, "image_tokens": total_tokens, "shards": shards_meta}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def all_rows(loader, n: int | None = None) -> list[dict]:
    """The next ``n`` batches of ``loader`` (all of them when it is finite and n is None)."""
    it = iter(loader)
    out = []
    for b in it:
        out.append(b)
        if n is not None and len(out) >= n:
            break
    return out


def same_batch(a: dict, b: dict) -> bool:
    """Bit-for-bit equality of two batches (tensors, ints and id lists)."""
    import torch

    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True
