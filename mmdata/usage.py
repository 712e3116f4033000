"""Running a typer app so that a usage error (a missing option, an unknown flag or command, a bad value)
is one line naming the command and where to look (CONTRACT s.9: one line, exit 2, no traceback),
instead of click's usage block and Rich's box. Shared by `mmdata` and `mmtrain`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

USAGE_EXIT = 2


def _click_module(name: str) -> list[Any]:
    """``name`` of the click bundled in typer (typer >= 0.16) and of a standalone click, where present."""
    out = []
    for mod in ("typer._click.exceptions", "click.exceptions"):
        try:
            out.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return out


def command_path(app: Any, prog: str, args: Sequence[str]) -> str:
    """``prog`` and the (sub)command names that lead ``args``: ``mmdata clean llava``."""
    from typer.main import get_command

    cmd, words = get_command(app), [prog]
    for a in args:
        sub = getattr(cmd, "commands", {}).get(a)
        if sub is None:
            break
        cmd = sub
        words.append(a)
    return " ".join(words)


def usage_line(e: Any, where: str) -> str:
    """``mmdata shard: missing option '--out' (see mmdata shard --help)``: a click UsageError in one line;
    ``where`` is the command path when the error does not carry its context."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else where
    msg = " ".join(e.format_message().split()).rstrip(".")
    msg = msg[:1].lower() + msg[1:]
    return f"{where}: {msg} (see {where} --help)"


def run_app(app: Any, prog: str, args: Sequence[str] | None = None) -> int:
    """Run ``app`` (typer) as ``prog`` with click's standalone handling off and return the exit code:
    a command's exit code, 2 after a usage error printed in one line, help when no arguments are given."""
    click_errors = tuple(_click_module("ClickException"))
    usage_errors = tuple(_click_module("UsageError"))
    no_args_help = tuple(_click_module("NoArgsIsHelpError"))
    args = list(args) if args is not None else sys.argv[1:]
    try:
        rc = app(args=args, prog_name=prog, standalone_mode=False)
    except click_errors as e:
        if isinstance(e, no_args_help):  # `mmdata` alone: the help, as click prints it
            e.show()
            return e.exit_code
        if isinstance(e, usage_errors):
            print(usage_line(e, command_path(app, prog, args)), file=sys.stderr, flush=True)
            return USAGE_EXIT
        print(f"{prog}: {' '.join(e.format_message().split())}", file=sys.stderr, flush=True)
        return e.exit_code
    except tuple(_click_module("Abort")):
        print("aborted", file=sys.stderr, flush=True)
        return 1
    return rc if isinstance(rc, int) else 0
