"""Faults around `mmtrain run` (issue 14 items 3, 7, 10; CONTRACT s.9): an unwritable --save fails
before the first iteration; a full disk at save time is one line, exit 2, no temp folder, the previous
checkpoint kept; SIGKILL leaves no loader worker alive; --load with another --model and an unknown
command are one line / a usage error, never a traceback."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmtrain import checkpoint as ckpt

generate = pytest.importorskip("fixtures.generate")
writer = pytest.importorskip("mmdata.shard.writer")
ROOT = Path(__file__).resolve().parents[1]
RUN = ("--seq-len", "512", "--global-batch-size", "2", "--log-interval", "1", "--device", "cpu",
       "--num-workers", "0", "--lr", "3e-3")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    p = generate.generate_llava_scale(root / "src", n_records=60, n_images=6, image_size=(96, 64), seed=5)
    out = root / "shards"
    writer.write_shards(p["llava_json"], p["images"], out, samples_per_shard=32, workers=1)
    return out


def _cli(*argv: str, fsize: int | None = None, cmd: str = "run") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")

    def limit() -> None:  # a full disk: writes past `fsize` bytes fail with EFBIG instead of SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "mmtrain.cli", *([cmd] if cmd else []), *argv],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
                          preexec_fn=limit if fsize else None)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file"])
def test_unwritable_save_fails_before_the_first_iteration(shards, tmp_path, where):
    f = tmp_path / "afile"
    f.write_text("keep me")
    save = f / "ck" if where == "under_a_file" else f
    r = _cli("--shards", str(shards), "--max-steps", "2", "--save", str(save), *RUN)
    line = _one_line_error(r)
    assert str(save) in line and "--save" in line
    assert " iteration " not in r.stdout  # nothing was trained
    assert f.read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch", "torch_dcp"])
def test_full_disk_at_save_is_one_line_keeps_the_previous_checkpoint_and_leaves_no_tmp(shards, tmp_path, fmt):
    save = tmp_path / "ck"
    first = _cli("--shards", str(shards), "--max-steps", "1", "--save", str(save), "--ckpt-format", fmt, *RUN)
    assert first.returncode == 0, first.stderr[-2000:]
    before = sorted(p.name for p in save.iterdir())
    r = _cli("--shards", str(shards), "--max-steps", "2", "--save", str(save), "--load", str(save),
             "--ckpt-format", fmt, *RUN, fsize=1 << 20)  # the tiny model's weights alone are ~2.8 MB
    line = _one_line_error(r)
    assert f"{save}: cannot write checkpoint iteration 2" in line and "previous checkpoint is kept" in line
    assert "iteration        2/" in r.stdout  # the iteration trained; only its save failed
    assert sorted(p.name for p in save.iterdir()) == before == ["hf_files", "iter_0000001", ckpt.TRACKER]
    assert ckpt.latest_iteration(save) == 1


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_mmtrain_leaves_no_loader_worker(shards):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    args = [a if a != "0" else "2" for a in RUN]  # --num-workers 2
    p = subprocess.Popen([sys.executable, "-m", "mmtrain.cli", "run", "--shards", str(shards), "--max-steps",
                          "100000", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=env, cwd=ROOT)
    try:
        for line in p.stdout:
            if line.startswith(" iteration"):
                break
        kids = _children(p.pid)
        assert len(kids) >= 2, kids  # the loader's workers
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        deadline = time.time() + 10
        while any(_alive(k) for k in kids) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(k) for k in kids), [k for k in kids if _alive(k)]
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.slow
def test_load_with_another_model_names_the_checkpoint_and_its_model(shards, tmp_path):
    save = tmp_path / "ck"
    assert _cli("--shards", str(shards), "--max-steps", "1", "--save", str(save), *RUN).returncode == 0
    r = _cli("--shards", str(shards), "--max-steps", "2", "--load", str(save), "--model", "100m", *RUN)
    line = _one_line_error(r)
    assert str(save / "iter_0000001") in line
    assert "was saved with --model tiny" in line and "--model 100m" in line


def test_unknown_command_is_a_usage_error_without_traceback():
    r = _cli("frobnicate", cmd="")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr == "mmtrain: no such command 'frobnicate' (see mmtrain --help)\n"


def test_a_missing_shard_is_found_before_the_run_starts(shards, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    (bad / "shard-000001.tar").unlink()
    r = _cli("--shards", str(bad), "--max-steps", "1", *RUN)
    line = _one_line_error(r)
    assert f"{bad / 'shard-000001.tar'}: shard file is missing (index.parquet lists" in line
    assert r.stdout == ""
