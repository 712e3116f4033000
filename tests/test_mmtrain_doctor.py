"""`mmtrain doctor`: one line per check, exit 1 on any FAIL, the fix named; version pairs judged
against torch_npu's published table and CUDA's driver minimums; broken shards, an unwritable --save,
a missing pdsh and a model that cannot fit each FAIL; a check that cannot run says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmtrain import doctor as dr

generate = pytest.importorskip("fixtures.generate")
writer = pytest.importorskip("mmdata.shard.writer")
ROOT = Path(__file__).resolve().parents[1]
STATUS = ("ok  ", "warn", "FAIL")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("doctor")
    p = generate.generate_llava_scale(root / "src", n_records=40, n_images=4, image_size=(96, 64), seed=7)
    out = root / "shards"
    writer.write_shards(p["llava_json"], p["images"], out, samples_per_shard=16, workers=1)
    return out


def _doctor(*argv: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "mmtrain.cli", "doctor", *argv], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def _lines(r: subprocess.CompletedProcess) -> dict[str, str]:
    """check name -> status, after asserting every line but the summary is a check line."""
    body = r.stdout.strip().splitlines()
    assert "Traceback" not in r.stderr, r.stderr
    assert body[-1].startswith(f"{len(body) - 1} checks: ")
    out = {}
    for ln in body[:-1]:
        assert ln[:4] in STATUS, ln
        out.setdefault(ln[6:18].strip(), ln[:4].strip())
    return out


def test_plain_doctor_passes_here_with_one_line_per_check(shards, tmp_path):
    r = _doctor("--shards", str(shards), "--save", str(tmp_path / "ck"), "--seq-len", "4096")
    got = _lines(r)
    assert r.returncode == 0, r.stdout
    for name in ("python", "torch", "torch_npu", "devices", "backend", "shards", "save", "memory"):
        assert got[name] == "ok", (name, r.stdout)
    assert "gloo all-reduce across 2 process(es)" in r.stdout


def test_missing_and_truncated_shards_fail_naming_the_file(shards, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    (bad / "shard-000001.tar").unlink()
    r = _doctor("--shards", str(bad))
    assert r.returncode == 1 and _lines(r)["shards"] == "FAIL"
    assert f"{bad / 'shard-000001.tar'}: shard file is missing (index.parquet lists" in r.stdout
    shutil.copy(shards / "shard-000001.tar", bad / "shard-000001.tar")
    with open(bad / "shard-000000.tar", "r+b") as f:
        f.truncate(1024)
    r = _doctor("--shards", str(bad))
    assert r.returncode == 1 and f"{bad / 'shard-000000.tar'}: 1024 bytes, manifest.json says" in r.stdout


def test_shards_made_for_another_family_or_too_long_for_seq_len_fail(shards, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(shards, other)
    m = json.loads((other / "manifest.json").read_text())
    m["options"]["rule"] = "qwen-vl"
    (other / "manifest.json").write_text(json.dumps(m))
    r = _doctor("--shards", str(other))
    assert r.returncode == 1 and _lines(r)["shard-rule"] == "FAIL"
    assert "re-shard with `mmdata shard ... --rule qwen2vl`" in r.stdout
    r = _doctor("--shards", str(shards), "--seq-len", "16")
    assert r.returncode == 1 and _lines(r)["seq-len"] == "FAIL"
    assert "raise --seq-len" in r.stdout


def test_unwritable_save_and_missing_pdsh_fail_with_the_fix(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    bin_dir = Path(sys.executable).parent
    r = _doctor("--save", str(f / "ck"), "--nnodes", "2", path=str(bin_dir))  # a PATH without pdsh
    got = _lines(r)
    assert r.returncode == 1
    assert got["save"] == "FAIL" and "--save folder is not writable" in r.stdout
    assert got["pdsh"] == "FAIL" and "install pdsh" in r.stdout


def test_a_model_that_cannot_fit_fails_with_the_seeds_advice(monkeypatch):
    a = dr.DoctorArgs(model="1b", seq_len=8192, micro_batch_size=2)
    env = dr.Env(kind="cpu", free_mem=[8 << 30])
    [res] = list(dr.check_memory(a, env))
    assert res.status == "FAIL"
    assert res.fix.startswith("--recompute-granularity full") and "--micro-batch-size 1" in res.fix
    assert "--max-image-tokens" in res.fix


def test_memory_estimate_moves_the_right_way():
    n, cfg = dr._params(dr.DoctorArgs(model="0.5b"))
    base = dr.estimate_memory(n, cfg, 4096, 1, 0, 8, False, True, 0.5)
    assert dr.estimate_memory(n, cfg, 4096, 1, 24, 8, False, True, 0.5).activations < base.activations / 5
    assert dr.estimate_memory(n, cfg, 4096, 1, 0, 8, True, True, 0.5).states == base.states // 8
    assert dr.estimate_memory(n, cfg, 4096, 2, 0, 8, False, True, 0.5).activations == 2 * base.activations
    assert base.states == 16 * n


@pytest.mark.parametrize("torch_v,npu_v,cann,want", [
    ("2.6.0", "2.6.0.post3", "8.3.RC1", ("ok", "ok")),
    ("2.6.0+cpu", "2.6.0.post3", "8.3.RC1.beta1", ("ok", "ok")),
    ("2.5.1", "2.6.0.post3", "8.3.RC1", ("FAIL", "ok")),  # torch_npu is built for another torch
    ("2.6.0", "2.6.0.post3", "8.2.RC1", ("ok", "FAIL")),  # CANN older than the wheel's
    ("2.6.0", "2.6.0", "8.3.RC1", ("ok", "warn")),  # CANN newer than the wheel's
    ("2.4.0", "2.4.0", "8.0.RC3", ("ok", "ok")),
    ("2.4.0", "2.4.0", "8.0.RC2", ("ok", "FAIL")),  # RC2 < RC3
    ("2.6.0", "2.6.0.post99", "8.3.RC1", ("ok", "warn")),  # not in the table
    ("2.6.0", "2.6.0.post3", None, ("ok", "FAIL")),  # no CANN found
])
def test_torch_npu_and_cann_pairs(torch_v, npu_v, cann, want):
    got = dr.npu_stack_verdict(torch_v, npu_v, cann)
    assert tuple(r.status for r in got) == want
    assert all(r.fix for r in got if r.status != "ok")


def test_cann_version_is_read_from_the_toolkit_that_set_env_points_at(tmp_path):
    home = tmp_path / "ascend-toolkit" / "latest"
    (home / "x86_64-linux").mkdir(parents=True)
    (home / "x86_64-linux" / "ascend_toolkit_install.info").write_text(
        "package_name=Ascend-cann-toolkit\nversion=8.0.RC3\ninnerversion=V100R001C19\n")
    assert dr.cann_version({"ASCEND_TOOLKIT_HOME": str(home)}) == ("8.0.RC3",
                                                                   home / "x86_64-linux" / "ascend_toolkit_install.info")


@pytest.mark.parametrize("runtime,driver,status", [("12.4", "535.104.05", "ok"), ("12.4", "470.82.01", "FAIL"),
                                                   ("11.8", "470.82.01", "ok"), ("12.1", None, "warn")])
def test_cuda_runtime_against_driver(runtime, driver, status):
    assert dr.cuda_verdict(runtime, driver).status == status


def test_a_check_that_cannot_run_says_why_and_the_rest_still_run(monkeypatch):
    def broken(a, env):
        raise OSError("no /proc here")
        yield

    monkeypatch.setattr(dr, "CHECKS", [("devices", broken), ("python", dr.check_python)])
    lines: list[str] = []
    assert dr.doctor(dr.DoctorArgs(), lines.append) == 0
    assert lines[0].startswith("warn  devices      could not check: OSError: no /proc here")
    assert lines[1].startswith("ok    python")
