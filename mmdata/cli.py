"""The `mmdata` command: a thin typer layer over the library (one `command.py` per stage)."""

from __future__ import annotations

import sys

import typer

from mmdata import __version__
from mmdata.errors import MMDataError

app = typer.Typer(
    name="mmdata",
    help="Clean, shard, inspect and load vision-language training data (COCO, LLaVA, messages).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mmdata {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    """mmdata: COCO / LLaVA -> clean conversation JSON -> token-capped webdataset shards -> packed loader."""


def _register() -> None:
    # Each stage registers its own commands; a stage that is missing (partial install) is skipped.
    import importlib

    for mod in ("mmdata.clean.command", "mmdata.shard.command", "mmdata.inspect.command"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:  # pragma: no cover - only while a stage is being built
            if e.name != mod:
                raise
            continue
        m.register(app)


_register()


def main() -> None:
    """Entry point: usage errors and user errors become one line + exit 2 (`mmdata.usage.run_app`)."""
    from mmdata.usage import run_app

    try:
        rc = run_app(app, "mmdata")
        if rc:
            sys.exit(rc)
    except MMDataError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
