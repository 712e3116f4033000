"""Pre-shard planning: token budget and packing forecast against hand-computed cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmdata.inspect.plan import pack_rows, plan_records


def _conv(human: str, gpt: str) -> list[dict]:
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    img = tmp_path / "img"
    img.mkdir()
    Image.new("RGB", (448, 448), (9, 9, 9)).save(img / "a.jpg")  # fits as is: 16 x 16 = 256 tokens
    Image.new("RGB", (1000, 500), (9, 9, 9)).save(img / "b.jpg")  # -> 448 x 224: 16 x 8 = 128 tokens
    Image.new("RGB", (56, 56), (9, 9, 9)).save(img / "c.png")  # 2 x 2 = 4 tokens
    recs = [
        {"id": "r1", "image": "a.jpg", "conversations": _conv("<image>", "g" * 40)},  # 40 chars -> 10; 266
        {"id": "r2", "image": "b.jpg", "conversations": _conv("<image>", "g" * 400)},  # 100 + 128 = 228
        {"id": "r3", "image": ["a.jpg", "c.png"], "conversations": _conv("<image><image>", "g" * 3)},  # 1 + 260
        {"id": "r4", "conversations": _conv("h" * 1000, "g" * 1000)},  # text only: 500
    ]
    (tmp_path / "clean.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return tmp_path


def test_hand_computed_budget_and_packing(data: Path) -> None:
    p = plan_records(data / "clean.jsonl", data / "img", max_res=448, max_image_tokens=1280, seq_len=512)
    assert (p["records"], p["samples"], p["images"], p["images_downscaled"]) == (4, 4, 4, 1)
    assert p["image_tokens_total"] == 256 + 128 + 260
    assert p["image_tokens"]["max"] == 260 and p["image_tokens"]["min"] == 0
    assert p["text_tokens"]["max"] == 500 and p["text_tokens"]["min"] == 1
    assert p["sample_tokens"] == {"min": 228, "p50": 263.5, "mean": 313.75, "p95": 464.9, "max": 500}
    assert p["total_tokens"] == 266 + 228 + 261 + 500
    assert p["over_seq_len"] == {"samples": 0, "share": 0.0}
    # best-fit decreasing: 500 | 266 + 228 | 261  -> 3 rows of 512
    assert p["packing"]["rows"] == 3
    assert p["packing"]["efficiency"] == round(1255 / 1536, 6)
    assert p["packing"]["padding_tokens"] == 1536 - 1255
    assert p["common_sizes"][0] == {"size": "448x448", "count": 2}
    assert p["errors"] == []
    assert p["text_tokens_method"].startswith("estimate: ceil(text chars / 4)")


def test_share_over_seq_len(data: Path) -> None:
    p = plan_records(data / "clean.jsonl", data / "img", seq_len=300)
    assert p["over_seq_len"] == {"samples": 1, "share": 0.25}
    assert (p["packing"]["samples_packed"], p["packing"]["rows"]) == (3, 3)  # 266 + 228 > 300
    assert p["packing"]["efficiency"] == round(755 / 900, 6)


def test_budget_flags_change_the_image_tokens(data: Path) -> None:
    p = plan_records(data / "clean.jsonl", data / "img", max_res=224, max_image_tokens=64, seq_len=512)
    # a.jpg -> 224 x 224 = 64; b.jpg -> 224 x 112 = 32; c.png = 4
    assert p["image_tokens_total"] == 64 + 32 + 64 + 4
    p = plan_records(data / "clean.jsonl", data / "img", rule="qwen-vl", seq_len=512)
    assert p["image_tokens_per_image"] == {"min": 256, "p50": 256, "mean": 256.0, "p95": 256, "max": 256}


def test_exif_orientation_is_applied(data: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the 1000 x 500 file displays as 500 x 1000
    Image.new("RGB", (1000, 500), (9, 9, 9)).save(data / "img" / "rot.jpg", exif=exif)
    (data / "rot.json").write_text(json.dumps([{"id": "x", "image": "rot.jpg", "conversations": _conv("<image>", "g")}]))
    p = plan_records(data / "rot.json", data / "img", seq_len=512)
    assert p["common_sizes"] == [{"size": "224x448", "count": 1}]


def test_missing_and_impossible_images_are_counted_and_named(data: Path) -> None:
    Image.new("RGB", (20, 3000), (9, 9, 9)).save(data / "img" / "thin.png")
    recs = [{"id": "m", "image": "nope.jpg", "conversations": _conv("<image>", "g")},
            {"id": "t", "image": "thin.png", "conversations": _conv("<image>", "g")},
            {"id": "ok", "image": "a.jpg", "conversations": _conv("<image>", "g")}]
    (data / "bad.json").write_text(json.dumps(recs))
    p = plan_records(data / "bad.json", data / "img", seq_len=512)
    assert p["samples"] == 1 and p["unusable"] == {"missing_image": 1, "over_token_budget": 1}
    assert [(e["shard"], e["key"], e["code"]) for e in p["errors"]] == [("bad.json", "m", "missing_image"),
                                                                         ("bad.json", "t", "over_token_budget")]
    res = subprocess.run([sys.executable, "-m", "mmdata.cli", "inspect", str(data / "bad.json"), "--images",
                          str(data / "img"), "--seq-len", "512", "--json"], capture_output=True, text=True)
    assert res.returncode == 1
    assert json.loads(res.stdout)["unusable"] == {"missing_image": 1, "over_token_budget": 1}


def test_cli_needs_images_and_names_bad_json(data: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "mmdata.cli", "inspect", str(data / "clean.jsonl")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "needs --images" in res.stderr
    (data / "broken.json").write_text('[{"id": "a"},\n  {"id": }]')
    res = subprocess.run([sys.executable, "-m", "mmdata.cli", "inspect", str(data / "broken.json"), "--images",
                          str(data / "img")], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"error: {data / 'broken.json'}:2:")


def test_workers_give_the_same_plan(data: Path) -> None:
    one = plan_records(data / "clean.jsonl", data / "img", seq_len=512, workers=1)
    two = plan_records(data / "clean.jsonl", data / "img", seq_len=512, workers=2)
    assert one == two


def test_forecast_uses_the_loaders_own_packer() -> None:
    from mmdata.text.pack import DEFAULT_PACKER, PACKERS

    rng = np.random.default_rng(1)
    lens = rng.integers(1, 2048, size=5000)
    rows, method = pack_rows(lens, 2048, window=1000)
    assert rows == sum(len(PACKERS[DEFAULT_PACKER](lens[a:a + 1000], None, 2048)) for a in range(0, 5000, 1000))
    assert DEFAULT_PACKER in method


def test_tokenizer_counts_are_the_loaders(data: Path) -> None:
    asset = Path(__file__).parents[1] / "mmdata" / "assets" / "tokenizer.json"
    if not asset.is_file():
        pytest.skip("the shipped tokenizer asset is missing")
    from mmdata.text.templates import text_token_count
    from mmdata.text.tokenizer import load_tokenizer

    p = plan_records(data / "clean.jsonl", data / "img", seq_len=4096, tokenizer=str(asset))
    tok = load_tokenizer(str(asset))
    recs = [json.loads(line) for line in (data / "clean.jsonl").read_text().splitlines()]
    counts = [text_token_count(r, tok, "qwen2vl") for r in recs]
    assert p["text_tokens"]["min"] == min(counts) and p["text_tokens"]["max"] == max(counts)
    assert p["total_tokens"] == sum(counts) + 256 + 128 + 260
    assert "qwen2vl template" in p["text_tokens_method"]
