"""inspect against the real shard writer: a fresh data set verifies clean, the pre-shard plan predicts
exactly the image tokens the writer stores, and damage to a real shard is found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

shard = pytest.importorskip("mmdata.shard", reason="mmdata.shard.write_shards is not importable yet")

from mmdata.inspect.plan import plan_records  # noqa: E402
from mmdata.inspect.stats import inspect_shards  # noqa: E402
from mmdata.inspect.verify import verify_shards  # noqa: E402

SIZES = [(640, 480), (480, 640), (1000, 300), (300, 300), (2000, 1500), (120, 90), (700, 700)]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("real")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    recs = []
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}.jpg", quality=80)
        recs.append({"id": f"s.{i}", "image": f"{i}.jpg", "source": "noise" if i % 2 else "coco",
                     "conversations": [{"from": "human", "value": "<image>\nWhat is this?"},
                                       {"from": "gpt", "value": " ".join(["Noise"] * (i + 1))}]})
    recs.append({"id": "t", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]})
    (root / "c.json").write_text(json.dumps(recs))
    shard.write_shards([root / "c.json"], root / "img", root / "out", max_res=448, max_image_tokens=256,
                       samples_per_shard=3, workers=1)
    return root, root / "out"


def test_fresh_shards_verify_clean_and_summary_matches_the_manifest(made) -> None:
    root, out = made
    m = json.loads((out / "manifest.json").read_text())
    s = inspect_shards([out])
    assert (s["samples"], s["shards"], s["errors"]) == (m["samples"], len(m["shards"]), [])
    assert s["bytes"] == sum(x["bytes"] for x in m["shards"])
    assert s["image_tokens_total"] == m["image_tokens"]
    assert verify_shards([out], workers=2) == []


def test_plan_predicts_the_writers_image_tokens(made) -> None:
    root, out = made
    m = json.loads((out / "manifest.json").read_text())
    p = plan_records(root / "c.json", root / "img", max_res=448, max_image_tokens=256, seq_len=1024)
    assert p["image_tokens_total"] == m["image_tokens"]
    assert p["samples"] == m["samples"]


def test_damage_to_a_real_shard_is_found(made, tmp_path: Path) -> None:
    import shutil

    _, out = made
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    tar = copy / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    codes = {(p.shard, p.code) for p in verify_shards([copy], workers=1)}
    assert ("shard-000001.tar", "truncated") in codes and ("shard-000001.tar", "sha256_mismatch") in codes
