"""SIGKILL `mmtrain run` while it trains and saves (CONTRACT s.5, s.9): no loader worker outlives it,
no half-written checkpoint is ever taken for a complete one, and the same command with --load
continues at the next iteration with the losses of an uninterrupted run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import LARGE, rng_for

import faultkit as fk

pytestmark = pytest.mark.slow  # three real training runs of a tiny model (~15 s on 2 cores)

STEPS = 4
LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \| consumed samples:\s+(\d+) .*?\| lm loss: (\S+) \|")


def train_args(shards: Path, *extra: object) -> tuple:
    return ("run", "--shards", shards, "--seq-len", "512", "--global-batch-size", "2", "--max-steps", STEPS,
            "--log-interval", "1", "--device", "cpu", "--num-workers", "2", "--seed", "3", *extra)


def losses(r: fk.Run) -> dict[int, tuple[str, str]]:
    """iteration -> (consumed samples, lm loss as logged) of every log line."""
    return {int(m[1]): (m[2], m[3]) for m in LINE.finditer(r.stdout)}


@pytest.fixture(scope="module")
def reference_run(train_shards, tmp_path_factory) -> tuple[dict[int, tuple[str, str]], Path]:
    """The uninterrupted run: its losses, and its checkpoint folder (saved at the end only)."""
    ck = tmp_path_factory.mktemp("train-ref") / "ck"
    r = fk.mmtrain(*train_args(train_shards, "--save", ck))
    assert r.rc == 0, r.explain()
    got = losses(r)
    assert sorted(got) == list(range(1, STEPS + 1)), r.explain()
    return got, ck


@pytest.fixture(scope="module")
def reference(reference_run) -> dict[int, tuple[str, str]]:
    return reference_run[0]


def kill_points(ck: Path) -> list[tuple[str, fk.Kill]]:
    rng = rng_for("train")
    points = [("while-saving-2", fk.Kill(path=str(ck / ".iter_0000002.tmp"), delay_s=rng.uniform(0.0, 0.02)))]
    for k in range(3 if LARGE else 0):
        it = rng.randint(1, STEPS - 1)
        points.append((f"after-iteration-{it}-{k}", fk.Kill(output=rf"iteration\s+{it}/", delay_s=rng.uniform(0, 0.4))))
    return points


NAMES = [n for n, _ in kill_points(Path("."))]


@pytest.fixture(scope="module", params=range(len(NAMES)), ids=NAMES)
def killed(request, train_shards, tmp_path_factory) -> tuple[fk.Run, Path]:
    shards = train_shards
    ck = tmp_path_factory.mktemp("train-kill") / "ck"
    name, kill = kill_points(ck)[request.param]
    r = fk.mmtrain(*train_args(shards, "--save", ck, "--save-interval", "1"), kill=kill)
    assert r.killed, f"{name}: the run ended before the kill point\n{r.explain()}"
    return r, ck


def test_killed_run_logged_the_reference_losses(killed, reference):
    r, _ = killed
    got = losses(r)
    assert got and all(got[i] == reference[i] for i in got), (got, reference)


def test_loader_workers_die_with_a_killed_trainer(killed):
    r, _ = killed
    assert r.seen, "no loader worker was running: the scenario did not happen\n" + r.explain()
    fk.assert_no_orphans(r)


def test_load_after_the_kill_continues_with_the_uninterrupted_losses(killed, reference, train_shards):
    r, ck = killed
    shards = train_shards
    again = fk.mmtrain(*train_args(shards, "--save", ck, "--save-interval", "1", "--load", ck))
    assert again.rc == 0, again.explain()
    got = losses(again)
    last = int((ck / "latest_checkpointed_iteration.txt").read_text())
    assert last == STEPS
    assert got, again.explain()
    first = min(got)
    assert sorted(got) == list(range(first, STEPS + 1)) and first <= max(losses(r)) + 1, (sorted(got), losses(r))
    assert got == {i: reference[i] for i in got}, "resumed losses differ from the uninterrupted run's"
    assert fk.strays(ck) == [], "a temp checkpoint folder was left behind"


def test_load_with_another_model_is_one_line_before_training(reference_run, train_shards):
    _, ck = reference_run
    before = fk.tree(ck)
    r = fk.mmtrain(*train_args(train_shards, "--load", ck, "--model", "100m", "--max-steps", STEPS + 2))
    fk.assert_user_error(r, str(ck))
    assert "iteration" not in r.stdout
    assert fk.tree(ck) == before, "a refused --load changed the checkpoint folder"
