"""`mmdata shard` on the command line: exit codes, one-line errors naming file:line:col, summary,
byte-identical reruns, --resume, clean -> shard end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_shard_writer import make_set, tree_bytes

from mmdata.errors import InputError
from mmdata.shard.command import parse_size

MMDATA = [sys.executable, "-m", "mmdata.cli"]


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MMDATA, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    src, img = make_set(root, n=6)
    return root, src, img


def test_shard_ok_summary_and_identical_rerun(data):
    root, src, img = data
    a, b = root / "a", root / "b"
    p = run("shard", src, "--images", img, "--out", a, "--max-res", "448", "--samples-per-shard", "3", "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert "samples" in p.stderr and "rejected" in p.stderr and "over_token_budget" in p.stderr
    m = json.loads((a / "manifest.json").read_text())
    assert (m["samples"], m["rejected"], len(m["shards"])) == (10, 9, 4)
    p = run("shard", src, "--images", img, "--out", b, "--samples-per-shard", "3", "--workers", "1", "-q")
    assert p.returncode == 0 and p.stderr == ""
    assert tree_bytes(a) == tree_bytes(b)
    p = run("shard", src, "--images", img, "--out", b, "--samples-per-shard", "3", "--resume", "-q")
    assert p.returncode == 0 and tree_bytes(a) == tree_bytes(b)


def test_invalid_json_is_exit_2_with_file_line_col(data, tmp_path):
    root, _, img = data
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "conversations": []}\n{"id": "b", oops}\n')
    p = run("shard", bad, "--images", img, "--out", tmp_path / "o")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:2:")
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("flags,msg", [
    (["--rule", "gpt4v"], "unknown rule"),
    (["--max-shard-bytes", "lots"], "--max-shard-bytes"),
    (["--max-res", "10"], "--max-res"),
])
def test_bad_options_are_exit_2(data, tmp_path, flags, msg):
    _, src, img = data
    p = run("shard", src, "--images", img, "--out", tmp_path / "o", *flags)
    assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr


def test_missing_input_and_images(data, tmp_path):
    _, src, img = data
    p = run("shard", tmp_path / "none.json", "--images", img, "--out", tmp_path / "o")
    assert p.returncode == 2 and "none.json: no such file" in p.stderr
    p = run("shard", src, "--images", tmp_path / "noimg", "--out", tmp_path / "o")
    assert p.returncode == 2 and "--images" in p.stderr


def test_parse_size():
    assert parse_size("1GB") == 10**9
    assert parse_size("500MB") == 5 * 10**8
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1e9") == 10**9
    assert parse_size("123456") == 123456
    with pytest.raises(InputError):
        parse_size("1 parsec")


def test_clean_then_shard(tmp_path):
    pytest.importorskip("mmdata.clean.command")
    fixtures = pytest.importorskip("fixtures.generate")
    paths = fixtures.generate(tmp_path / "fx")
    llava, images = paths["llava_json"], paths["images"]
    clean = tmp_path / "clean.json"
    p = run("clean", "llava", llava, "--images", images, "--out", clean, "--workers", "1", "-q")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "shards"
    p = run("shard", clean, "--images", images, "--out", out, "--workers", "2", "-q")
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    n_clean = len(json.loads(clean.read_text()))
    # Everything clean accepted is shardable at the defaults except what exceeds the token rule.
    assert m["samples"] + m["rejected"] == n_clean
    assert set(m["reject_reasons"]) <= {"over_token_budget"}
