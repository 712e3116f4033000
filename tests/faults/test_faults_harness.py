"""The harness can fail: it sees an orphan that outlives a SIGKILLed parent, it does not see one where
the child dies with the parent (PR_SET_PDEATHSIG), and its kill points fire where they say."""

from __future__ import annotations

import sys

import faultkit as fk

SPAWN = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {child!r}])
print("spawned", flush=True)
time.sleep(60)
"""
ORPHAN = "import time; time.sleep(60)"
DIES = ("import ctypes, os, signal, time; ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0); "
        "os.getppid() == 1 and os._exit(0); time.sleep(60)")


def test_an_orphan_is_seen_and_reaped():
    r = fk.run([sys.executable, "-c", SPAWN.format(child=ORPHAN)], kill=fk.Kill(children=1, delay_s=0.2))
    assert r.killed and len(r.orphans) == 1, r.explain()
    assert not any(fk.alive(p) for p in r.orphans), "the harness left the orphan running"


def test_a_child_that_dies_with_its_parent_is_no_orphan():
    r = fk.run([sys.executable, "-c", SPAWN.format(child=DIES)], kill=fk.Kill(output="spawned", delay_s=0.2))
    assert r.killed and r.seen and r.orphans == [], r.explain()


def test_strays_are_temp_journal_and_lock_files(tmp_path):
    for name in ("a.json", ".a.json.x1.tmp", ".shard-journal.jsonl", "sub/.iter_0000002.tmp/model.pt", "x.lock"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert fk.strays(tmp_path) == [".a.json.x1.tmp", ".shard-journal.jsonl", "sub/.iter_0000002.tmp", "x.lock"]
