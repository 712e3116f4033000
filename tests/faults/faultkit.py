"""Fault-injection harness: run a CLI in its own process group, SIGKILL it at a chosen point, and
check what CONTRACT s.9 promises afterwards (no live child, no stray temp file, nothing lost).

Linux only (reads /proc). Plain functions over subprocess, os and resource; psutil is not a
dependency of the project, and /proc gives all we need (ppid, process group, state, start time).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What a run of the suite did, printed by conftest's terminal summary (the report's figures).
TALLY = {"runs": 0, "kills": 0, "fuzz_cases": 0, "data_checks": 0}

# ---------------------------------------------------------------------------------------------
# processes


@dataclass(frozen=True)
class Proc:
    """A process as /proc shows it; (pid, start) names it uniquely (pids are reused)."""

    pid: int
    ppid: int
    pgrp: int
    state: str
    start: int
    cmd: str = ""


def _proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    return Proc(pid, int(rest[1]), int(rest[2]), rest[0], int(rest[19]), data[data.find("(") + 1:data.rfind(")")])


def all_procs() -> list[Proc]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = _proc(int(name))
            if p is not None:
                out.append(p)
    return out


def descendants(pid: int, procs: list[Proc] | None = None) -> list[Proc]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    procs = all_procs() if procs is None else procs
    kids: dict[int, list[Proc]] = {}
    for p in procs:
        kids.setdefault(p.ppid, []).append(p)
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c.pid)
    return out


def alive(p: Proc) -> bool:
    """True while the very process ``p`` (same start time) exists and is not a zombie."""
    now = _proc(p.pid)
    return now is not None and now.start == p.start and now.state not in ("Z", "X")


def survivors(seen: dict[tuple[int, int], Proc], pgid: int) -> list[Proc]:
    """Processes that outlived their killed parent: any seen descendant still alive, and anything
    still alive in the run's process group (an orphan keeps its group when init adopts it)."""
    out = {(p.pid, p.start): p for p in seen.values() if alive(p)}
    for p in all_procs():
        if p.pgrp == pgid and p.state not in ("Z", "X"):
            out.setdefault((p.pid, p.start), p)
    return list(out.values())


# ---------------------------------------------------------------------------------------------
# running a command


@dataclass
class Kill:
    """When to SIGKILL the command (the first condition met wins; None = not used).

    ``after_s``: seconds after start; ``path``: a glob (absolute; ``**`` spans hidden folders) that
    matches a file; ``output``: a regex that matches stdout + stderr so far; ``children``: that many
    descendants alive.
    ``delay_s`` is waited after the condition is met (a seeded offset into the next step).
    """

    after_s: float | None = None
    path: str | None = None
    output: str | None = None
    children: int | None = None
    delay_s: float = 0.0
    min_bytes: int = 0  # with ``path``: fire only once a matching file holds at least this many bytes

    def describe(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.__dict__.items() if v not in (None, 0.0)]
        return "Kill(" + ", ".join(parts) + ")"


@dataclass
class Run:
    """What one run did. ``killed``: the kill fired before the command ended by itself."""

    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    killed: bool = False
    seconds: float = 0.0
    seen: dict[tuple[int, int], Proc] = field(default_factory=dict)
    orphans: list[Proc] = field(default_factory=list)

    def explain(self) -> str:
        return (f"$ {' '.join(self.argv)}\nrc={self.rc}\n--- stdout\n{self.stdout[-3000:]}\n"
                f"--- stderr\n{self.stderr[-3000:]}")


def _limits(fsize: int | None):
    def pre() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # stays ignored across exec: writes fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return pre


def cli_argv(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
               COLUMNS="120", TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    env.pop("PYTHONFAULTHANDLER", None)
    env.update(extra)
    return env


def run(argv: list[str], *, kill: Kill | None = None, fsize: int | None = None, env: dict | None = None,
        timeout: float = 180, cwd: Path = ROOT, orphan_grace_s: float = 1.5) -> Run:
    """Run ``argv`` in a new session (its own process group); SIGKILL only the leader when ``kill``
    fires, as the OOM killer or a scheduler would; then record the descendants still alive after
    ``orphan_grace_s`` as orphans, and kill them so no test leaks a process."""
    TALLY["runs"] += 1
    with tempfile.TemporaryDirectory(prefix="faults-io-") as io_dir:
        out_p, err_p = Path(io_dir, "out"), Path(io_dir, "err")
        with open(out_p, "wb") as out, open(err_p, "wb") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                    env=env or base_env(), start_new_session=True, preexec_fn=_limits(fsize))
            seen: dict[tuple[int, int], Proc] = {}
            killed = False
            fired_at: float | None = None
            kids: list[Proc] = []
            tick = 0
            while proc.poll() is None:
                now = time.monotonic() - t0
                if now > timeout:
                    _kill_group(proc.pid, seen)
                    proc.wait()
                    raise AssertionError(f"timed out after {timeout} s: {' '.join(argv)}")
                if tick % 4 == 0:  # a /proc scan costs ~5 ms: every 4th tick; file and output checks every tick
                    kids = descendants(proc.pid)
                    for p in kids:
                        seen.setdefault((p.pid, p.start), p)
                tick += 1
                if kill is not None and fired_at is None and _fires(kill, now, out_p, err_p, len(kids)):
                    fired_at = now
                if fired_at is not None and now >= fired_at + kill.delay_s:  # type: ignore[union-attr]
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    killed = True
                    TALLY["kills"] += 1
                    proc.wait()
                    break
                time.sleep(0.005)
            rc = proc.wait()
            seconds = time.monotonic() - t0
        orphans = _await_orphans(seen, proc.pid, orphan_grace_s) if killed else []
        if not killed:  # a normal exit must not leave anything behind either
            orphans = _await_orphans(seen, proc.pid, orphan_grace_s)
        return Run(argv, rc, out_p.read_text(errors="replace"), err_p.read_text(errors="replace"), killed,
                   seconds, seen, orphans)


def _fires(kill: Kill, now: float, out_p: Path, err_p: Path, n_kids: int) -> bool:
    if kill.after_s is not None and now >= kill.after_s:
        return True
    if kill.children is not None and n_kids >= kill.children:
        return True
    if kill.path is not None:
        import glob

        for p in glob.glob(kill.path, recursive=True, include_hidden=True):  # `**` also looks in hidden folders
            with contextlib.suppress(OSError):
                if os.stat(p).st_size >= kill.min_bytes:
                    return True
    if kill.output is not None:
        text = out_p.read_bytes().decode("utf-8", "replace") + err_p.read_bytes().decode("utf-8", "replace")
        if re.search(kill.output, text):
            return True
    return False


def _await_orphans(seen: dict, pgid: int, grace_s: float) -> list[Proc]:
    deadline = time.monotonic() + grace_s
    left = survivors(seen, pgid)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = survivors(seen, pgid)
    if left:
        _kill_group(pgid, seen)
        end = time.monotonic() + 5
        while any(alive(p) for p in left) and time.monotonic() < end:  # SIGKILL is not instant
            time.sleep(0.02)
    return left


def _kill_group(pgid: int, seen: dict) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for p in seen.values():
        if alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)


def mmdata(*args: object, **kw) -> Run:
    return run(cli_argv("mmdata.cli", *args), **kw)


def mmtrain(*args: object, **kw) -> Run:
    return run(cli_argv("mmtrain.cli", *args), **kw)


# ---------------------------------------------------------------------------------------------
# what the contract says about a finished or refused run


def assert_user_error(r: Run, *needles: str) -> None:
    """CONTRACT s.9: exit 2, exactly one line on stderr, no traceback; the line names each needle."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.rc == 2, r.explain()
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.explain()
    assert len(lines) == 1, r.explain()
    for n in needles:
        assert n in lines[0], f"{n!r} not in the error line\n{r.explain()}"


def assert_no_orphans(r: Run) -> None:
    assert not r.orphans, ("processes outlived the SIGKILLed command: "
                           + ", ".join(f"{p.pid} ({p.cmd}, state {p.state})" for p in r.orphans) + "\n" + r.explain())


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too): file -> sha256, link -> target, dir -> 'dir'."""
    TALLY["data_checks"] += 1
    out: dict[str, str] = {}
    root = Path(root)
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(root))] = "link:" + os.readlink(p) if p.is_symlink() else "dir"
        for f in filenames:
            p = Path(dirpath, f)
            if p.is_symlink():
                out[str(p.relative_to(root))] = "link:" + os.readlink(p)
            else:
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


STRAY = re.compile(r"(\.tmp$|\.probe$|^\.shard-journal\.jsonl$|\.part$|\.lock$)")


def strays(root: Path) -> list[str]:
    """Temp, journal, probe and lock files and shard's staging folder under ``root``: none may be left
    once a command has finished."""
    return sorted(k for k in tree(root) if STRAY.search(Path(k).name) or ".mmdata-staging" in Path(k).parts)


def diff(a: dict[str, str], b: dict[str, str]) -> str:
    keys = sorted(set(a) | set(b))
    return "\n".join(f"{k}: {a.get(k, '-')[:12]} != {b.get(k, '-')[:12]}" for k in keys if a.get(k) != b.get(k))


# ---------------------------------------------------------------------------------------------
# broken file systems


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[str]:
    """Make the existing folder ``path`` refuse new entries, in a way that binds root too.

    Not root: chmod 0555. Root (permissions do not bind): ``chattr +i`` (ext4, xfs, btrfs), else a
    read-only bind mount; skips the test with a reason if neither works. Yields the method used.
    """
    path = Path(path)
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555)
        try:
            yield "chmod 0555"
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        try:
            yield "chattr +i"
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        return
    ok = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True).returncode == 0:
        try:
            yield "read-only bind mount"
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    if ok:
        subprocess.run(["umount", "-l", str(path)], check=False)
    pytest.skip("running as root and neither chattr +i nor a read-only bind mount works here: "
                "permissions would not bind, so an unwritable folder cannot be made")


@contextlib.contextmanager
def tiny_fs(path: Path, size: str) -> Iterator[Path]:
    """A real, small file system (tmpfs of ``size``) mounted at ``path``: writes past it fail with
    ENOSPC, as on a full disk. Skips when mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a full-disk test: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
