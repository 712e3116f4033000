"""Nothing that exists is lost (CONTRACT s.9): a failed or refused run leaves the previous output as it
was, no command deletes or overwrites one of its own inputs, and two runs never write one output at
once (the second refuses)."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SHARD_OPTS

import faultkit as fk


def _shard_argv(inputs: list[Path], images: Path, out: Path, *extra: str) -> list[str]:
    return fk.cli_argv("mmdata.cli", "shard", *inputs, "--images", images, "--out", out, *SHARD_OPTS, *extra)


def test_two_shard_runs_on_one_out_one_refuses_and_the_output_is_whole(src, ref_shards, tmp_path):
    """Deterministic overlap: the first run is frozen (SIGSTOP to its group) while it writes a shard, the
    second runs to its end meanwhile, then the first goes on. The second must refuse; the first finish."""
    ref, _ = ref_shards
    out = tmp_path / "out"
    argv = _shard_argv([src["llava_jsonl"]], src["images"], out)
    env = fk.base_env()
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=fk.ROOT, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(f"{out}/**/job-000001.done.json", recursive=True, include_hidden=True):
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended before it was frozen"
            time.sleep(0.005)
        os.killpg(first.pid, signal.SIGSTOP)
        second = fk.run(argv)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGCONT)
    rc1 = first.wait(timeout=180)
    _, err1 = first.communicate()
    fk.TALLY["runs"] += 1
    assert rc1 == 0, err1
    fk.assert_user_error(second, str(out))
    assert fk.tree(out) == fk.tree(ref), fk.diff(fk.tree(out), fk.tree(ref))


def test_a_failed_shard_leaves_the_previous_output_as_it_was(src, ref_shards, tmp_path):
    ref, _ = ref_shards
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    before = fk.tree(out)
    cut = tmp_path / "cut.jsonl"
    data = src["llava_jsonl"].read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])  # a truncated copy: the last record is cut mid-line
    r = fk.run(_shard_argv([cut], src["images"], out))
    fk.assert_user_error(r, str(cut))
    assert fk.tree(out) == before, fk.diff(fk.tree(out), before)


@pytest.mark.parametrize("name", ["rejects.jsonl", "shard-000000.tar"])
def test_shard_never_deletes_its_own_input_in_out(src, tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    inp = out / name
    shutil.copyfile(src["llava_jsonl"], inp)
    before = fk.tree(out)[name]
    r = fk.run(_shard_argv([inp], src["images"], out))
    assert inp.exists() and fk.tree(out)[name] == before, f"the input {name} was deleted or overwritten\n{r.explain()}"
    assert r.rc in (0, 2) and "Traceback" not in r.stderr, r.explain()
    if r.rc == 2:
        fk.assert_user_error(r, name)


@pytest.mark.parametrize("flag", ["--out", "--rejects", "--report"])
def test_clean_refuses_to_write_over_its_input(dirty, tmp_path, flag):
    inp = tmp_path / "in.json"
    shutil.copyfile(dirty["llava_json"], inp)
    before = fk.tree(tmp_path)
    args = {"--out": tmp_path / "out.json", flag: inp}
    r = fk.mmdata("clean", "llava", inp, "--images", dirty["images"], *[x for kv in args.items() for x in kv], "-q")
    fk.assert_user_error(r, str(inp))
    assert fk.tree(tmp_path) == before


def test_clean_refuses_an_out_that_is_the_input_through_a_symlink(dirty, tmp_path):
    inp = tmp_path / "in.json"
    shutil.copyfile(dirty["llava_json"], inp)
    (tmp_path / "alias.json").symlink_to(inp)
    before = fk.tree(tmp_path)
    r = fk.mmdata("clean", "llava", inp, "--images", dirty["images"], "--out", tmp_path / "alias.json", "-q")
    fk.assert_user_error(r)
    assert fk.tree(tmp_path) == before


def test_an_output_path_that_is_a_device_node_is_not_replaced(dirty, tmp_path):
    """`--out /dev/null` as root would swap the system's null device for a regular file if the atomic
    rename went ahead; checked on a private node (mknod c 1 3) so the machine's /dev is never at risk."""
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    r = fk.mmdata("clean", "llava", dirty["llava_json"], "--images", dirty["images"],
                  "--out", node.with_suffix(".json"), "--rejects", node, "-q")
    assert stat.S_ISCHR(node.lstat().st_mode), f"the device node was replaced by a regular file\n{r.explain()}"
    assert r.rc in (0, 2) and "Traceback" not in r.stderr, r.explain()


def test_inputs_are_untouched_by_a_full_pipeline_run(dirty, tmp_path):
    """clean -> shard -> inspect read their inputs only: the whole raw folder is byte-identical after."""
    before = fk.tree(dirty["root"])
    clean_out = tmp_path / "c.json"
    r = fk.mmdata("clean", "llava", dirty["llava_json"], "--images", dirty["images"], "--out", clean_out, "-q")
    assert r.rc == 0, r.explain()
    r = fk.mmdata("shard", clean_out, "--images", dirty["images"], "--out", tmp_path / "s", "--max-res", "224",
                  "--workers", "1", "-q")
    assert r.rc == 0, r.explain()
    r = fk.mmdata("inspect", tmp_path / "s", "--verify", "--json")
    assert r.rc == 0, r.explain()
    assert fk.tree(dirty["root"]) == before
