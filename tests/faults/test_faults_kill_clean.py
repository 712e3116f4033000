"""SIGKILL `mmdata clean` at seeded points over an output folder that already holds an earlier run's
files: each output is afterwards either the earlier file or the complete new one (never a partial
file), no pool worker outlives the parent, and a rerun ends byte-identical to an uninterrupted run,
with no temp file left beside OUT."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import LARGE, rng_for

import faultkit as fk

OUTS = ("out.jsonl", "out.rejects.jsonl", "out.report.json")


def _clean(inp: Path, images: Path, out_dir: Path, **kw) -> fk.Run:
    return fk.mmdata("clean", "llava", inp, "--images", images, "--out", out_dir / "out.jsonl", "--workers", "2", "-q",
                     **kw)


@pytest.fixture(scope="module")
def ref(clean_src, tmp_path_factory) -> tuple[dict[str, str], float]:
    out = tmp_path_factory.mktemp("clean-ref")
    r = _clean(clean_src["llava_jsonl"], clean_src["images"], out)
    assert r.rc == 0, r.explain()
    return fk.tree(out), r.seconds


@pytest.fixture(scope="module")
def earlier(dirty, tmp_path_factory) -> Path:
    """A folder holding an earlier, different clean run's outputs under the same names."""
    out = tmp_path_factory.mktemp("clean-earlier")
    r = _clean(dirty["llava_jsonl"], dirty["images"], out)
    assert r.rc == 0, r.explain()
    return out


def kill_points(ref_seconds: float) -> list[tuple[str, fk.Kill]]:
    rng = rng_for("clean")
    points = [("pool-started", fk.Kill(children=2, delay_s=0.05)),
              ("writing-out", fk.Kill(path="{out}/.out.jsonl.*.tmp", delay_s=rng.uniform(0, 0.02)))]
    for k in range(5 if LARGE else 1):
        points.append((f"random-time-{k}", fk.Kill(after_s=rng.uniform(0.2, 0.9) * ref_seconds)))
    return points


NAMES = [n for n, _ in kill_points(1.0)]


@pytest.mark.parametrize("point", range(len(NAMES)), ids=NAMES)
def test_clean_killed_leaves_old_or_whole_outputs_and_rerun_is_identical(clean_src, ref, earlier, tmp_path, point):
    ref_tree, ref_s = ref
    name, kill = kill_points(ref_s)[point]
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    old = fk.tree(out)
    inputs = fk.tree(clean_src["root"])
    if kill.path:
        kill.path = kill.path.format(out=out)
    r = _clean(clean_src["llava_jsonl"], clean_src["images"], out, kill=kill)
    if not name.startswith("random-time"):
        assert r.killed, f"{name}: the kill point was never reached\n{r.explain()}"
    now = fk.tree(out)
    for f in OUTS:
        assert now.get(f) in (old[f], ref_tree[f]), f"{name}: {f} is neither the earlier file nor the new one"
    again = _clean(clean_src["llava_jsonl"], clean_src["images"], out)
    assert again.rc == 0, again.explain()
    after = {k: v for k, v in fk.tree(out).items() if k not in fk.strays(out)}  # strays: the next test
    assert after == ref_tree, f"{name}: after the rerun:\n{fk.diff(after, ref_tree)}"
    assert fk.tree(clean_src["root"]) == inputs


def test_clean_rerun_after_a_kill_mid_write_leaves_no_temp_file(clean_src, ref, tmp_path):
    out = tmp_path / "out"
    r = _clean(clean_src["llava_jsonl"], clean_src["images"], out, kill=fk.Kill(path=f"{out}/.out.jsonl.*.tmp"))
    assert r.killed, r.explain()
    again = _clean(clean_src["llava_jsonl"], clean_src["images"], out)
    assert again.rc == 0, again.explain()
    assert fk.strays(out) == []


def test_clean_pool_workers_die_with_a_killed_parent(clean_src, tmp_path):
    r = _clean(clean_src["llava_jsonl"], clean_src["images"], tmp_path, kill=fk.Kill(children=2, delay_s=0.05))
    assert r.killed and r.seen, "the pool never started: the scenario did not happen\n" + r.explain()
    fk.assert_no_orphans(r)
