"""The pipeline as a user runs it: `mmdata clean` -> `mmdata shard` -> `mmdata inspect --verify`,
through the real console commands, on the dirty fixtures. Every record is accounted for from the
raw input to the shards, and a second run of the whole pipeline gives byte-identical files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fixtures.generate import generate

ROOT = Path(__file__).resolve().parents[1]


def mmdata(*args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "mmdata.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def run_pipeline(raw: dict, out: Path) -> dict:
    """clean the three inputs, shard them together, verify; return what each step said."""
    images = raw["images"]
    cleaned = {"coco": out / "clean" / "coco.json", "llava": out / "clean" / "llava.jsonl",
               "messages": out / "clean" / "messages.json"}
    steps = {}
    steps["coco"] = mmdata("clean", "coco", raw["coco"], "--images", images, "--out", cleaned["coco"], "--workers", 2)
    steps["llava"] = mmdata("clean", "llava", raw["llava_json"], "--images", images, "--out", cleaned["llava"])
    steps["messages"] = mmdata("clean", "llava", raw["messages"], "--images", images, "--out", cleaned["messages"])
    steps["shard"] = mmdata("shard", *cleaned.values(), "--images", images, "--out", out / "shards",
                            "--max-res", 448, "--max-image-tokens", 256, "--samples-per-shard", 16, "--workers", 2)
    steps["inspect"] = mmdata("inspect", out / "shards", "--verify", "--json")
    return {"steps": steps, "cleaned": cleaned, "shards": out / "shards"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    return generate(tmp_path_factory.mktemp("raw") / "fx", seed=0)


@pytest.fixture(scope="module")
def first(raw, tmp_path_factory) -> dict:
    return run_pipeline(raw, tmp_path_factory.mktemp("run1"))


def _lines(path: Path) -> list[dict]:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x]


def test_every_step_exits_zero(first):
    for name, p in first["steps"].items():
        assert p.returncode == 0, f"{name}: {p.stderr[-2000:]}"


def test_clean_accounts_for_every_input_record(raw, first):
    expected = json.loads(Path(raw["expected"]).read_text())
    for name, key in (("llava", "llava/llava.json"), ("messages", "messages/messages.json")):
        out = first["cleaned"][name]
        report = json.loads(out.with_name(out.stem + ".report.json").read_text())
        want = expected[key]
        assert report["input"] == len(want)
        assert report["written"] == sum(v == "ok" for v in want.values())
        assert report["written"] + report["rejected"] == report["input"]
        assert len(_lines(out)) == report["written"]
        rejects = _lines(out.with_name(out.stem + ".rejects.jsonl"))
        assert {r["index"]: r["reason"] for r in rejects} == {int(i): v for i, v in want.items() if v != "ok"}


def test_shards_hold_exactly_the_clean_records_minus_shard_rejects(first):
    cleaned_ids = [r["id"] for p in first["cleaned"].values() for r in _lines(p)]
    manifest = json.loads((first["shards"] / "manifest.json").read_text())
    shard_rejects = _lines(first["shards"] / "rejects.jsonl")
    index = pq.read_table(first["shards"] / "index.parquet").to_pydict()
    assert manifest["samples"] == len(index["id"]) == len(cleaned_ids) - len(shard_rejects)
    rejected_ids = [r["id"] for r in shard_rejects]
    assert [i for i in cleaned_ids if i not in rejected_ids] == index["id"]  # order kept, nothing lost
    assert all("." not in k for k in index["key"]) and len(set(index["key"])) == len(index["key"])
    assert sum(s["samples"] for s in manifest["shards"]) == manifest["samples"]
    for s in manifest["shards"]:
        data = (first["shards"] / s["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]


def test_inspect_verify_finds_nothing_and_agrees_with_the_manifest(first):
    p = first["steps"]["inspect"]
    out = json.loads(p.stdout)
    manifest = json.loads((first["shards"] / "manifest.json").read_text())
    assert out["samples"] == manifest["samples"] and out["shards"] == len(manifest["shards"])
    assert not out["errors"]
    assert out["image_tokens"]["max"] <= 256


def test_the_whole_pipeline_is_byte_identical_on_a_rerun(raw, first, tmp_path):
    second = run_pipeline(raw, tmp_path)
    for name, p in second["steps"].items():
        assert p.returncode == 0, f"{name}: {p.stderr[-2000:]}"

    def digest(root: Path) -> dict[str, str]:
        return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(root.rglob("*")) if f.is_file() and ".mmdata-cache" not in f.parts}

    a = digest(first["cleaned"]["coco"].parent) | digest(first["shards"])
    b = digest(second["cleaned"]["coco"].parent) | digest(second["shards"])
    assert a == b
