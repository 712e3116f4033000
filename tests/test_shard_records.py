"""shard applies clean's record rules (mmdata.records.normalize): input roles renamed and values
stripped, rules 1-4 rejected with their codes, messages-shape input read, and every stored json
passes the strict CONTRACT s.1 check that `mmdata inspect --verify` uses."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_shard_writer import jpeg, make_set, members

from mmdata.records import validate_record
from mmdata.shard import write_shards

MMDATA = [sys.executable, "-m", "mmdata.cli"]


def stored_jsons(out: Path) -> list[dict]:
    m = json.loads((out / "manifest.json").read_text())
    return [json.loads(d) for s in m["shards"] for n, d in members(out / s["name"]) if n.endswith(".json")]


def check_all_valid(out: Path) -> list[dict]:
    recs = stored_jsons(out)
    assert recs
    for r in recs:
        assert validate_record(r) == [], r
    return recs


def test_dirty_input_is_stored_as_clean_would_write_it(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    (img / "a.jpg").write_bytes(jpeg(64, 48))
    recs = [
        {"id": "u", "conversations": [{"from": "user", "value": " hi "}, {"from": "assistant", "value": "hello\n"}]},
        {"id": "sys", "image": ["a.jpg"], "conversations": [
            {"from": "system", "value": " Be brief. "}, {"from": "human", "value": "<image>\nWhat? "},
            {"from": "gpt", "value": "A picture."}]},
        {"id": "roles", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "odd", "conversations": [{"from": "human", "value": "unanswered"}]},
        {"id": "empty", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]},
        {"id": "gptimg", "image": "a.jpg", "conversations": [{"from": "human", "value": "q"},
                                                             {"from": "gpt", "value": "<image>"}]},
        {"id": "count", "image": ["a.jpg", "a.jpg"], "conversations": [{"from": "human", "value": "<image> q"},
                                                                       {"from": "gpt", "value": "a"}]},
        {"id": " ", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"id": ["x"], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"id": "nul", "image": "a\x00.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                              {"from": "gpt", "value": "a"}]},
    ]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(recs))
    out = tmp_path / "out"
    report = write_shards([src], img, out, workers=1)
    stored = check_all_valid(out)
    assert [r["id"] for r in stored] == ["u", "sys", "in-7"]  # a blank id counts as missing, as in clean
    assert stored[0]["conversations"] == [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    assert stored[1]["system"] == "Be brief." and stored[1]["image"] == "a.jpg"
    assert stored[1]["conversations"][0] == {"from": "human", "value": "<image>\nWhat?"}
    rows = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rows} == {
        "roles": "bad_roles", "odd": "bad_roles", "empty": "empty_turn", "gptimg": "image_token_mismatch",
        "count": "image_token_mismatch", None: "malformed", "nul": "unsafe_path"}
    assert report.reasons == {"bad_roles": 2, "empty_turn": 1, "image_token_mismatch": 2, "malformed": 1,
                              "unsafe_path": 1}
    # The original record goes to rejects.jsonl as it was read.
    assert rows[0]["record"] == recs[2]


def test_every_stored_json_of_the_fixture_sets_passes_validate_record(tmp_path):
    src, img = make_set(tmp_path / "set")
    check_all_valid_out = tmp_path / "a"
    write_shards([src], img, check_all_valid_out, samples_per_shard=4, workers=1)
    check_all_valid(check_all_valid_out)
    fixtures = pytest.importorskip("fixtures.generate")
    paths = fixtures.generate(tmp_path / "fx")
    for name in ("llava_json", "messages"):  # the raw dirty inputs, not clean's output
        out = tmp_path / name
        report = write_shards([paths[name]], paths["images"], out, workers=1)
        assert report.samples > 0
        check_all_valid(out)


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*MMDATA, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_clean_messages_output_shards_to_the_same_samples_as_llava_output(tmp_path):
    pytest.importorskip("mmdata.clean.command")
    fixtures = pytest.importorskip("fixtures.generate")
    paths = fixtures.generate(tmp_path / "fx")
    images = paths["images"]
    outs = {}
    for fmt in ("llava", "messages"):
        clean = tmp_path / fmt / "clean.json"  # same file name: same default ids and sources
        clean.parent.mkdir()
        p = run("clean", "llava", paths["llava_json"], "--images", images, "--out", clean, "--workers", "1",
                "--out-format", fmt, "-q")
        assert p.returncode == 0, p.stderr
        outs[fmt] = tmp_path / fmt / "shards"
        p = run("shard", clean, "--images", images, "--out", outs[fmt], "--workers", "1", "-q")
        assert p.returncode == 0, p.stderr
    a, b = (json.loads((outs[f] / "manifest.json").read_text()) for f in ("llava", "messages"))
    assert a["samples"] > 0 and b["samples"] == a["samples"] and b["reject_reasons"] == a["reject_reasons"]
    assert "malformed" not in b["reject_reasons"]
    for s, t in zip(a["shards"], b["shards"]):
        assert (outs["messages"] / t["name"]).read_bytes() == (outs["llava"] / s["name"]).read_bytes()
    assert (outs["messages"] / "index.parquet").read_bytes() == (outs["llava"] / "index.parquet").read_bytes()
    check_all_valid(outs["messages"])


def test_a_clean_record_is_stored_with_its_own_bytes(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    (img / "a.jpg").write_bytes(jpeg(64, 48))
    # Clean, but keys in an unusual order and an extra key first: the stored json keeps them so.
    rec = {"source": "x", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
           "image": "a.jpg", "id": "k"}
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    out = tmp_path / "out"
    write_shards([src], img, out, workers=1)
    with tarfile.open(out / "shard-000000.tar") as t:
        stored = json.loads(t.extractfile("000000000.json").read())
    assert list(stored) == ["source", "conversations", "image", "id", "images", "image_tokens"]
