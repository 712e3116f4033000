"""Fixtures of the fault-injection suite: small generated inputs and uninterrupted reference runs,
made once per session; and a summary line of what the suite did (runs, kills, fuzz cases)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import faultkit as fk

# MMDATA_FAULTS_LARGE=1: more kill points and fuzz examples (for a report, not for CI).
LARGE = os.environ.get("MMDATA_FAULTS_LARGE", "") not in ("", "0")
SEED = int(os.environ.get("MMDATA_FAULTS_SEED", "14"))
SHARD_OPTS = ("--max-res", "448", "--samples-per-shard", "4", "--workers", "2", "-q")


def _hypothesis_home_outside_the_repo() -> None:
    """database=None keeps no examples, but hypothesis still caches constants and unicode tables in
    ./.hypothesis: point its home at a temp folder (removed at exit) so a run writes nothing into the repo."""
    try:
        from hypothesis.configuration import set_hypothesis_home_dir
    except ImportError:
        return
    import atexit
    import shutil
    import tempfile

    home = tempfile.mkdtemp(prefix="faults-hypothesis-")
    atexit.register(shutil.rmtree, home, True)
    set_hypothesis_home_dir(home)


_hypothesis_home_outside_the_repo()


def rng_for(name: str) -> random.Random:
    """A seeded generator per scenario, so adding a scenario never moves another's kill points."""
    return random.Random(f"{SEED}:{name}")


@pytest.fixture(scope="session")
def src(tmp_path_factory) -> dict[str, Path]:
    """A clean LLaVA set over 24 photo-sized images (48 records -> 12 shards of 4)."""
    from fixtures.generate import generate_llava_scale

    return generate_llava_scale(tmp_path_factory.mktemp("faults-src") / "src", n_records=48, n_images=24,
                                image_size=(640, 480), seed=1)


@pytest.fixture(scope="session")
def src_tree(src) -> dict[str, str]:
    """The inputs as they were before any scenario ran: every scenario must leave them so."""
    return fk.tree(src["root"])


@pytest.fixture(scope="session")
def ref_shards(src, tmp_path_factory) -> tuple[Path, fk.Run]:
    """The uninterrupted `mmdata shard` run that every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("faults-ref") / "shards"
    r = fk.mmdata("shard", src["llava_jsonl"], "--images", src["images"], "--out", out, *SHARD_OPTS)
    assert r.rc == 0, r.explain()
    assert len(list(out.glob("shard-*.tar"))) >= 10
    return out, r


@pytest.fixture(scope="session")
def train_shards(ref_shards, tmp_path_factory) -> Path:
    """A copy of the reference shards for `mmtrain`, so no training scenario can change the reference
    that shard scenarios compare against (the loader's caches go under $MMDATA_CACHE, not here)."""
    import shutil

    out = tmp_path_factory.mktemp("faults-train") / "shards"
    shutil.copytree(ref_shards[0], out)
    return out


@pytest.fixture(scope="session")
def dirty(tmp_path_factory) -> dict[str, Path]:
    """The small dirty fixture set (every reject reason; hostile paths and images)."""
    from fixtures.generate import generate

    return generate(tmp_path_factory.mktemp("faults-dirty") / "fx", seed=0)


@pytest.fixture(scope="session")
def clean_src(tmp_path_factory) -> dict[str, Path]:
    """A clean run long enough to be killed in the middle: 3000 records over 300 small images."""
    from fixtures.generate import generate_llava_scale

    return generate_llava_scale(tmp_path_factory.mktemp("faults-clean") / "src", n_records=3000, n_images=300,
                                image_size=(256, 192), seed=2)


def pytest_terminal_summary(terminalreporter) -> None:
    t = fk.TALLY
    if t["runs"] or t["fuzz_cases"]:
        terminalreporter.write_line(
            f"faults: {t['runs']} command runs, {t['kills']} SIGKILLs, {t['fuzz_cases']} fuzz cases, "
            f"{t['data_checks']} folder snapshots compared")
