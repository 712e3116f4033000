"""A tiny shard writer for the inspect tests, following docs/DESIGN.md "Shard format" exactly.

Independent of ``mmdata.shard`` on purpose: inspect is checked against the documented format, so a
writer bug cannot hide an inspect bug (and the other way round). Also a check of the kit itself.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmdata.models.rules import get_rule

RULE = "qwen2vl"
MAX_RES = 448
MAX_TOKENS = 1280


def jpeg(w: int, h: int, seed: int) -> bytes:
    """A photo-ish JPEG (gradient + noise) of exactly w x h."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), np.full_like(x, (seed * 37) % 256)], -1)
    arr = np.clip(base + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def spec(i: int, sizes: list[tuple[int, int]], human: str = "Describe it.", gpt: str | None = None,
         source: str = "coco") -> dict[str, Any]:
    return {"id": f"img.{i}", "sizes": sizes, "human": human, "gpt": gpt or f"Answer number {i}.", "source": source}


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


def write_dataset(out: Path, specs: list[dict[str, Any]], samples_per_shard: int = 3) -> dict[str, Any]:
    """Write shards + index.parquet + manifest.json for ``specs``; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    rule = get_rule(RULE)
    rows: dict[str, list[Any]] = {c: [] for c in ("key", "shard", "shard_idx", "offset", "nbytes", "id", "n_images",
                                                   "image_tokens", "image_tokens_list", "widths", "heights",
                                                   "text_chars", "n_turns", "source")}
    shards = []
    for si in range(0, len(specs), samples_per_shard):
        name = f"shard-{si // samples_per_shard:06d}.tar"
        buf = io.BytesIO()
        tf = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)
        chunk = specs[si: si + samples_per_shard]
        for j, sp in enumerate(chunk):
            n = si + j
            key = f"{n:09d}"
            sizes = sp["sizes"]
            toks = [rule.tokens(w, h, MAX_TOKENS) for w, h in sizes]
            human = "<image>\n" * len(sizes) + sp["human"]
            rec: dict[str, Any] = {"id": sp["id"]}
            if len(sizes) == 1:
                rec["image"] = f"{sp['id']}.jpg"
            elif sizes:
                rec["image"] = [f"{sp['id']}_{k}.jpg" for k in range(len(sizes))]
            rec["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": sp["gpt"]}]
            rec["source"] = sp["source"]
            rec["images"] = [{"width": w, "height": h, "orig_width": w, "orig_height": h, "image_tokens": t,
                              "passthrough": True} for (w, h), t in zip(sizes, toks)]
            rec["image_tokens"] = sum(toks)
            members = [(f"{key}.json", orjson.dumps(rec))]
            if len(sizes) == 1:
                members.append((f"{key}.jpg", jpeg(*sizes[0], seed=n)))
            else:
                members += [(f"{key}.{k}.jpg", jpeg(w, h, seed=n * 10 + k)) for k, (w, h) in enumerate(sizes)]
            start = tf.offset
            for mname, data in members:
                tf.addfile(_tarinfo(mname, len(data)), io.BytesIO(data))
            text = (human + sp["gpt"]).replace("<image>", "")  # DESIGN: turn values, <image> removed
            for c, v in (("key", key), ("shard", name), ("shard_idx", si // samples_per_shard), ("offset", start),
                         ("nbytes", tf.offset - start), ("id", sp["id"]), ("n_images", len(sizes)),
                         ("image_tokens", sum(toks)), ("image_tokens_list", toks),
                         ("widths", [w for w, _ in sizes]), ("heights", [h for _, h in sizes]),
                         ("text_chars", len(text)), ("n_turns", 2), ("source", sp["source"])):
                rows[c].append(v)
        tf.close()
        data = buf.getvalue()
        (out / name).write_bytes(data)
        shards.append({"name": name, "samples": len(chunk), "bytes": len(data),
                       "sha256": hashlib.sha256(data).hexdigest(), "first_key": f"{si:09d}",
                       "last_key": f"{si + len(chunk) - 1:09d}"})
    schema = pa.schema([("key", pa.string()), ("shard", pa.string()), ("shard_idx", pa.int32()), ("offset", pa.int64()),
                        ("nbytes", pa.int64()), ("id", pa.string()), ("n_images", pa.int16()),
                        ("image_tokens", pa.int32()), ("image_tokens_list", pa.list_(pa.int32())),
                        ("widths", pa.list_(pa.int32())), ("heights", pa.list_(pa.int32())),
                        ("text_chars", pa.int32()), ("n_turns", pa.int16()), ("source", pa.string())])
    pq.write_table(pa.table(rows, schema=schema), out / "index.parquet")
    manifest = {"format": "mmdata.shards", "version": 1, "created_by": "mmdata test-kit",
                "options": {"rule": RULE, "max_res": MAX_RES, "max_image_tokens": MAX_TOKENS, "quality": 90,
                            "samples_per_shard": samples_per_shard, "max_shard_bytes": None, "inputs": ["t.json"]},
                "samples": len(specs), "rejected": 1, "image_tokens": int(sum(rows["image_tokens"])), "shards": shards}
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest


# The standard clean data set of the tests: 7 samples over 3 shards, 1 text-only, 1 with two images.
CLEAN_SPECS = [
    spec(0, [(448, 336)]),
    spec(1, [(336, 448)], source="llava"),
    spec(2, [(224, 224)], human="What is in the picture, in detail?"),
    spec(3, [(448, 336), (112, 112)], human="Compare them."),
    spec(4, [], human="Say hi.", gpt="Hi.", source="text"),
    spec(5, [(448, 252)], source="llava"),
    spec(6, [(56, 448)]),
]


def test_kit_writes_the_documented_layout(tmp_path: Path) -> None:
    m = write_dataset(tmp_path / "ds", CLEAN_SPECS)
    assert [s["name"] for s in m["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(tmp_path / "ds" / "shard-000001.tar") as tf:
        assert tf.getnames() == ["000000003.json", "000000003.0.jpg", "000000003.1.jpg", "000000004.json",
                                 "000000005.json", "000000005.jpg"]
    t = pq.read_table(tmp_path / "ds" / "index.parquet")
    assert t.column("image_tokens").to_pylist() == [192, 192, 64, 208, 0, 144, 32]
