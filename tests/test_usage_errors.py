"""Usage errors of `mmdata` and `mmtrain` (a missing argument or option, an unknown flag or command, a
bad value) are one line on stderr naming the command and where to look, exit 2, no traceback
(CONTRACT s.9); --help and the bare command still print the help."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _main(prog: str, *argv: str) -> tuple[int, str, str]:
    """``prog ARGV`` through its real entry point, in this process: (exit code, stdout, stderr)."""
    import importlib

    main = importlib.import_module(f"{prog}.cli").main
    out, err = io.StringIO(), io.StringIO()
    old, sys.argv = sys.argv, [prog, *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


CASES = [
    ("mmdata", ("shard", "in.jsonl", "--images", "img"), "mmdata shard: missing option '--out' (see mmdata shard --help)"),
    ("mmdata", ("shard",), "mmdata shard: missing argument 'inputs' (see mmdata shard --help)"),
    ("mmdata", ("shard", "in.jsonl", "--images", "img", "--out", "o", "--bogus"),
     "mmdata shard: no such option: --bogus"),
    ("mmdata", ("shard", "in.jsonl", "--images", "img", "--out", "o", "--workers", "abc"),
     "mmdata shard: invalid value for '--workers'"),
    ("mmdata", ("clean", "llava"), "mmdata clean llava: missing argument 'input' (see mmdata clean llava --help)"),
    ("mmdata", ("frobnicate",), "mmdata: no such command 'frobnicate' (see mmdata --help)"),
    ("mmtrain", ("frobnicate",), "mmtrain: no such command 'frobnicate' (see mmtrain --help)"),
    ("mmtrain", ("run", "--bogus"), "mmtrain run: no such option: --bogus (see mmtrain run --help)"),
    ("mmtrain", ("run", "--seq-len", "x"), "mmtrain run: invalid value for '--seq-len'"),
    ("mmtrain", ("doctor", "--nnodes"), "mmtrain doctor: option '--nnodes' requires an argument (see mmtrain doctor --help)"),
]


@pytest.mark.parametrize("prog,argv,line", CASES, ids=[" ".join((c[0], *c[1])) for c in CASES])
def test_a_usage_error_is_one_line_and_exit_2(prog, argv, line):
    code, out, err = _main(prog, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    assert lines[0].startswith(line) and lines[0].endswith("--help)"), lines[0]
    assert "Traceback" not in err and "╭" not in err and out == ""


@pytest.mark.parametrize("prog,argv", [("mmdata", ("--help",)), ("mmdata", ("shard", "--help")),
                                       ("mmtrain", ("run", "--help"))])
def test_help_still_works(prog, argv):
    code, out, err = _main(prog, *argv)
    assert code == 0 and f"Usage: {prog} {' '.join(argv[:-1])}".rstrip() in out and "--help" in out, (out, err)


def test_the_bare_command_prints_the_help():
    code, out, err = _main("mmdata")
    assert code == 2 and "Usage: mmdata" in out + err and "shard" in out + err


def test_a_real_process_prints_one_line():
    r = subprocess.run([sys.executable, "-m", "mmdata.cli", "shard", "x.jsonl", "--images", "i"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr == "mmdata shard: missing option '--out' (see mmdata shard --help)\n"
