"""Faults made to happen for real around `mmdata shard` and the loader (issue 14, CONTRACT s.9): each
asserts exit 2 with one line and no traceback, the previous output untouched, the inputs untouched and
no temp, journal, staging or lock file left."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_shard_writer import make_set

from mmdata.errors import InputError
from mmdata.format import names
from mmdata.shard import write_shards

REPO = Path(__file__).resolve().parents[1]


def snapshot(d: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``d`` (hidden ones too): sha256 and mtime, so a rewrite with equal bytes shows."""
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


def shard_cli(*args: str | Path, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmdata.cli", "shard", *map(str, args), "-q"], cwd=REPO,
                          capture_output=True, text=True, timeout=180, preexec_fn=preexec)


def assert_one_line_error(p: subprocess.CompletedProcess, *parts: str) -> str:
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def assert_no_leftovers(out: Path) -> None:
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [], hidden  # no .tmp, journal, staging folder or lock


@pytest.fixture()
def good(tmp_path):
    """A complete shard folder and its inputs."""
    src, img = make_set(tmp_path / "data", n=12)
    out = tmp_path / "out"
    write_shards([src], img, out, samples_per_shard=4, workers=1)
    return src, img, out


def test_a_failing_rerun_leaves_the_previous_output_as_it_was(good, tmp_path):
    src, img, out = good
    before, inputs = snapshot(out), snapshot(src.parent)
    broken = tmp_path / "truncated.json"
    broken.write_bytes(src.read_bytes()[:-40])  # invalid JSON near the end: found only mid-run
    p = shard_cli(broken, "--images", img, "--out", out, "--samples-per-shard", "3", "--workers", "1")
    assert_one_line_error(p, str(broken), "invalid JSON")
    assert snapshot(out) == before and snapshot(src.parent) == inputs
    assert_no_leftovers(out)


_HOLDER = """
import sys, time
from pathlib import Path
from mmdata.shard import write_shards
ready, go = Path(sys.argv[4]), Path(sys.argv[5])
def hold(records, samples, rejected):
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
write_shards([sys.argv[1]], sys.argv[2], sys.argv[3], samples_per_shard=4, workers=1, progress=hold)
"""


def _start_holder(src: Path, img: Path, out: Path, tmp: Path) -> tuple[subprocess.Popen, Path]:
    ready, go = tmp / "ready", tmp / "go"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(src), str(img), str(out), str(ready), str(go)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the first run did not start"
        time.sleep(0.01)
    return proc, go


def test_a_second_run_on_the_same_out_refuses_while_the_first_finishes(good, tmp_path):
    src, img, ref = good
    out = tmp_path / "busy"
    first, go = _start_holder(src, img, out, tmp_path)
    try:
        p = shard_cli(src, "--images", img, "--out", out, "--samples-per-shard", "4", "--workers", "1")
        assert_one_line_error(p, str(out), "another `mmdata shard` is writing this folder", f"pid {first.pid}")
    finally:
        go.touch()
        assert first.wait(timeout=120) == 0
    assert snapshot(out).keys() == snapshot(ref).keys()
    assert {k: v[0] for k, v in snapshot(out).items()} == {k: v[0] for k, v in snapshot(ref).items()}
    assert_no_leftovers(out)


def test_a_lock_left_by_a_killed_run_does_not_block_the_rerun(good, tmp_path):
    src, img, ref = good
    out = tmp_path / "killed"
    first, _ = _start_holder(src, img, out, tmp_path)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert (out / names.LOCK).exists()  # the file stays; the kernel dropped its lock
    p = shard_cli(src, "--images", img, "--out", out, "--samples-per-shard", "4", "--workers", "1", "--resume")
    assert p.returncode == 0, p.stderr
    assert {k: v[0] for k, v in snapshot(out).items()} == {k: v[0] for k, v in snapshot(ref).items()}
    assert_no_leftovers(out)


@pytest.mark.parametrize("name", ["rejects.jsonl", "manifest.json", "index.parquet", "shard-000000.tar"])
def test_an_input_living_in_out_under_a_name_shard_writes_is_refused(good, name):
    src, img, out = good
    victim = out / name
    victim.write_bytes(src.read_bytes())  # e.g. re-sharding the rejects after fixing them
    before = snapshot(out)
    p = shard_cli(victim, "--images", img, "--out", out, "--workers", "1")
    assert_one_line_error(p, str(victim), "under a name `mmdata shard` writes")
    assert snapshot(out) == before
    assert_no_leftovers(out)


def test_an_image_root_inside_the_staging_folder_is_refused(good):
    src, img, out = good
    inside = out / names.STAGING / "img"
    shutil.copytree(img, inside)
    p = shard_cli(src, "--images", inside, "--out", out, "--workers", "1")
    assert_one_line_error(p, str(inside), "--images is in --out")
    shutil.rmtree(out / names.STAGING)


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, as on a full disk
    return apply


def test_a_full_disk_is_one_line_and_loses_nothing(good):
    src, img, out = good
    before, inputs = snapshot(out), snapshot(src.parent)
    p = shard_cli(src, "--images", img, "--out", out, "--samples-per-shard", "100", "--workers", "1",
                  preexec=_file_size_limit(30_000))
    assert_one_line_error(p, "File too large", "free space or choose another --out",
                          "the previous output is unchanged")
    assert snapshot(out) == before and snapshot(src.parent) == inputs
    assert_no_leftovers(out)


def test_a_full_disk_on_a_fresh_out_leaves_nothing_behind(good, tmp_path):
    src, img, _ = good
    out = tmp_path / "fresh"
    p = shard_cli(src, "--images", img, "--out", out, "--samples-per-shard", "100", "--workers", "2",
                  preexec=_file_size_limit(30_000))
    assert_one_line_error(p, "File too large")
    assert sorted(out.iterdir()) == []


def test_refusing_a_resume_keeps_the_killed_runs_shards(good, tmp_path):
    src, img, _ = good
    out = tmp_path / "r"

    class Crash(Exception):
        pass

    def crash(records, samples, rejected):
        if samples >= 9:
            raise Crash

    with pytest.raises(Crash):
        write_shards([src], img, out, samples_per_shard=4, workers=1, progress=crash)
    staged = snapshot(out / names.STAGING)
    assert any(k.startswith("job-") and k.endswith(".tar") for k in staged)  # the finished jobs' parts
    with pytest.raises(InputError, match="differ"):
        write_shards([src], img, out, samples_per_shard=5, workers=1, resume=True)
    assert snapshot(out / names.STAGING) == staged  # what --resume needs is still there
