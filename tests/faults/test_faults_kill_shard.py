"""SIGKILL `mmdata shard` at seeded points (mid-part, after a job's done-record, during the final
move, at a random time) and
check CONTRACT s.3 / s.9: no live child, every shard under its final name is complete, the inputs are
untouched, and a rerun (with or without --resume) ends byte-identical to an uninterrupted run with no
temp or staging file left."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import LARGE, SHARD_OPTS, rng_for

import faultkit as fk


def kill_points(ref_seconds: float) -> list[tuple[str, fk.Kill]]:
    """Named kill points; the time-based ones are seeded fractions of the uninterrupted run's time.
    Jobs write ``job-NNNNNN.part-NNNNNN.tar`` and ``job-NNNNNN.done.json`` in the staging folder; a
    ``shard-NNNNNN.tar`` appears in OUTDIR only during the final move."""
    rng = rng_for("shard")
    points = [
        ("mid-part", lambda out: fk.Kill(path=f"{out}/**/.job-*.part-*.tar.*.tmp")),  # any part being written
        ("after-job-5", lambda out: fk.Kill(path=f"{out}/**/job-000005.done.json")),
        ("during-move", lambda out: fk.Kill(path=f"{out}/shard-000003.tar")),
    ]
    for k in range(6 if LARGE else 1):
        t = rng.uniform(0.2, 0.8) * ref_seconds
        points.append((f"random-time-{k}", lambda out, t=t: fk.Kill(after_s=t)))
    return points


# A job's part is written in one burst (microseconds for 4 samples) and the final move of 12 shards
# takes a few ms: too short for a watcher that polls every few ms. For the points inside them the
# command runs under this shim, which waits 30 ms after each sample written into a part and after
# each move: the same bytes, with a part's temp file and the move each lasting ~100 ms or more.
SLOW = """
import sys, time
from mmdata import storage
from mmdata.shard import planned
write, move = planned._Part.write, storage.move
def slow_write(self, data):
    offset = write(self, data)
    time.sleep(0.03)
    return offset
def slow_move(src, dst):
    move(src, dst)
    time.sleep(0.03)
planned._Part.write, storage.move = slow_write, slow_move
sys.argv[0] = "mmdata"
from mmdata.cli import main
main()
"""


def _shard(src, out: Path, *extra: str, slow: bool = False, **kw) -> fk.Run:
    args = ("shard", src["llava_jsonl"], "--images", src["images"], "--out", out, *SHARD_OPTS, *extra)
    if slow:
        return fk.run([sys.executable, "-c", SLOW, *map(str, args)], **kw)
    return fk.mmdata(*args, **kw)


def _check_killed_state(out: Path, ref: dict[str, str], r: fk.Run) -> None:
    """Whatever a kill leaves: a shard under its final name is a complete one (the reference's bytes)."""
    fk.assert_no_orphans(r)
    now = fk.tree(out)
    for name, digest in now.items():
        if name.startswith("shard-") or name in ("manifest.json", "index.parquet"):
            assert digest == ref[name], f"{name} under its final name is not the uninterrupted run's\n{r.explain()}"


@pytest.fixture(scope="module")
def ref(ref_shards) -> tuple[dict[str, str], float]:
    out, r = ref_shards
    return fk.tree(out), r.seconds


def _points(ref_seconds: float = 1.5) -> list[str]:
    return [name for name, _ in kill_points(ref_seconds)]


@pytest.mark.parametrize("point", range(len(_points())), ids=_points())
def test_shard_killed_then_resumed_is_byte_identical(src, src_tree, ref, tmp_path, point):
    ref_tree, ref_s = ref
    name, make = kill_points(ref_s)[point]
    out = tmp_path / "out"
    r = _shard(src, out, kill=make(out), slow=name in ("mid-part", "during-move"))
    if not name.startswith("random-time"):
        assert r.killed and r.seen, f"{name}: the kill point was never reached (or no worker ran)\n{r.explain()}"
    _check_killed_state(out, ref_tree, r)  # pool workers included: none outlives the parent
    again = _shard(src, out, "--resume")
    assert again.rc == 0, again.explain()
    assert fk.tree(out) == ref_tree, f"{name}: resumed output differs:\n{fk.diff(fk.tree(out), ref_tree)}"
    assert fk.tree(src["root"]) == src_tree


def test_shard_killed_then_rerun_without_resume_is_byte_identical(src, src_tree, ref, tmp_path):
    ref_tree, ref_s = ref
    out = tmp_path / "out"
    r = _shard(src, out, kill=fk.Kill(after_s=rng_for("shard-rerun").uniform(0.3, 0.9) * ref_s))
    _check_killed_state(out, ref_tree, r)
    again = _shard(src, out)
    assert again.rc == 0, again.explain()
    assert fk.tree(out) == ref_tree, fk.diff(fk.tree(out), ref_tree)
    assert fk.tree(src["root"]) == src_tree


def test_resume_of_a_finished_folder_rewrites_nothing(src, ref_shards, ref, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ref_shards[0], out)  # copy2: the modification times come along
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = _shard(src, out, "--resume")
    assert r.rc == 0, r.explain()
    assert fk.tree(out) == ref[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_shard_killed_again_while_resuming_still_ends_byte_identical(src, src_tree, ref, tmp_path):
    ref_tree, _ = ref
    out = tmp_path / "out"
    first = _shard(src, out, kill=fk.Kill(path=f"{out}/**/job-000003.done.json"))
    second = _shard(src, out, "--resume", kill=fk.Kill(path=f"{out}/**/job-000008.done.json"))
    assert first.killed and second.killed, second.explain()
    _check_killed_state(out, ref_tree, second)
    again = _shard(src, out, "--resume")
    assert again.rc == 0, again.explain()
    assert fk.tree(out) == ref_tree, fk.diff(fk.tree(out), ref_tree)
    assert fk.tree(src["root"]) == src_tree


@pytest.fixture(scope="module")
def earlier(src, tmp_path_factory) -> Path:
    """A complete shard folder of an earlier run with other options (6 samples a shard)."""
    out = tmp_path_factory.mktemp("shard-earlier") / "out"
    r = fk.mmdata("shard", src["llava_jsonl"], "--images", src["images"], "--out", out, "--max-res", "448",
                  "--samples-per-shard", "6", "--workers", "2", "-q")
    assert r.rc == 0, r.explain()
    return out


@pytest.fixture(scope="module")
def killed_over_earlier(src, earlier, tmp_path_factory) -> tuple[Path, dict[str, str], fk.Run]:
    """A new run with other options killed once 3 of its jobs are done, in a folder that holds an
    earlier output (whose own shard files must not trigger the kill: hence the done-record)."""
    out = tmp_path_factory.mktemp("shard-over") / "out"
    shutil.copytree(earlier, out)
    before = fk.tree(out)
    r = _shard(src, out, kill=fk.Kill(path=f"{out}/**/job-000002.done.json"))
    assert r.killed, r.explain()
    return out, before, r


def test_shard_killed_over_an_earlier_output_leaves_it_as_it_was(killed_over_earlier):
    out, before, r = killed_over_earlier
    fk.assert_no_orphans(r)
    visible = {k: v for k, v in fk.tree(out).items() if not k.startswith(".")}
    assert visible == before, f"the earlier output changed before the new one was complete:\n{fk.diff(visible, before)}"


def test_resume_after_a_kill_over_an_earlier_output_ends_byte_identical(src, ref, killed_over_earlier):
    out, _, _ = killed_over_earlier
    again = _shard(src, out, "--resume")
    assert again.rc == 0, again.explain()
    assert fk.tree(out) == ref[0], fk.diff(fk.tree(out), ref[0])
