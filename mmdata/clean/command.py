"""`mmdata clean coco|llava|hf`: flags (CONTRACT s.2) -> the library; progress and a summary on stderr."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import typer

from mmdata.clean.report import CleanReport
from mmdata.images import DEFAULT_MAX_PIXELS
from mmdata.records import DEFAULT_MAX_TEXT_CHARS, REASONS

__all__ = ["register"]

clean_app = typer.Typer(help="Check and normalise raw data into conversation JSON; every record ends in OUT or the rejects file.",
                        no_args_is_help=True)

_IMAGES = typer.Option(..., "--images", help="Root folder (or s3://bucket/prefix) the image paths are relative to.")
_OUT = typer.Option(..., "--out", help="Output: .json (one JSON array) or .jsonl (JSON Lines); local or s3://.")
_REJECTS = typer.Option(None, "--rejects", help="Rejects (JSON Lines). Default: OUT.rejects.jsonl.")
_REPORT = typer.Option(None, "--report", help="Report (JSON). Default: OUT.report.json.")
_MIN_SIDE = typer.Option(28, "--min-side", help="Reject images whose shorter side is smaller (after EXIF).")
_MAX_ASPECT = typer.Option(200.0, "--max-aspect", help="Reject images with long/short side above this.")
_MAX_PIXELS = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels",
                           help="Images with more pixels are decompression bombs (unreadable_image).")
_WORKERS = typer.Option(None, "--workers", help="Worker processes for parsing, checks and image decoding (default: all cores).")
_OUT_FORMAT = typer.Option("llava", "--out-format", help="llava (CONTRACT s.1) or messages (LLaMA-Factory / MindSpeed-MM).")
_INPUT = typer.Argument(..., help="LLaVA / ShareGPT / messages records: a JSON array or JSON Lines.")
_CAPTIONS = typer.Argument(..., help="A COCO captions file (images + annotations).")
_PER_CAPTION = typer.Option(False, "--per-caption", help="One record per caption, id {stem}_{annotation id}.")
_PROMPTS = typer.Option(None, "--prompts", help="Prompt list, one per line (default: LLaVA's brief-description prompts).")
_INPUT_FORMAT = typer.Option("auto", "--input-format",
                             help="auto (per record: conversations / messages / instruction+output), llava or messages.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars and no summary.")
_MAX_TEXT = typer.Option(DEFAULT_MAX_TEXT_CHARS, "--max-text-chars",
                         help="Reject records whose turns hold more characters (text_too_long).")
_ENGINE = typer.Option("local", "--engine", help="local (a process pool) or ray (image checks as tasks on a "
                       "running Ray cluster; the same output bytes).")
_RAY_ADDRESS = typer.Option(None, "--ray-address", help="Ray cluster to join with --engine ray: auto (default) or HOST:PORT.")
_REKEY = typer.Option(False, "--rekey", help="Make a repeated id unique as <id>-<n> (counted in the report) "
                      "instead of rejecting it as duplicate_id.")


def _run(quiet: bool, fn: Callable[..., CleanReport], engine: str = "local", ray_address: str | None = None,
         **kw) -> None:
    from mmdata.clean.pool import clean_engine
    from mmdata.procs import keep_freed_memory

    keep_freed_memory()  # this process is ours: the JSON array reader's 8 MB chunks no longer fault in afresh
    with clean_engine(engine, ray_address):
        _run_here(quiet, fn, **kw)


def _run_here(quiet: bool, fn: Callable[..., CleanReport], **kw) -> None:
    if quiet:  # no rich at all: its import is a tenth of a quiet run's fixed cost
        fn(**kw)
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    t0 = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[records]:,} records"),
                  TextColumn("{task.fields[images]:,} images checked"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("cleaning", records=0, images=0)
        state = {"records": 0}

        def progress(records: int, images: int) -> None:
            state["records"] = max(state["records"], records)
            bar.update(task, records=state["records"], images=images)

        report = fn(progress=progress, **kw)
    _summary(console, report, time.perf_counter() - t0)


def _summary(console, report: CleanReport, seconds: float) -> None:
    from rich.table import Table

    table = Table(title=f"mmdata clean {report.kind}: {report.source}", title_justify="left")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_row("input", f"{report.input:,}")
    table.add_row("[green]written[/green]", f"{report.written:,}")
    table.add_row("[red]rejected[/red]", f"{report.rejected:,}")
    for code in REASONS:
        n = report.by_reason.get(code, 0)
        if n:
            table.add_row(f"  {code}", f"{n:,}")
    table.add_row("images checked", f"{report.images_checked:,}")
    if report.extra.get("rekeyed"):
        table.add_row("ids made unique (--rekey)", f"{report.extra['rekeyed']:,}")
    console.print(table)
    for hint in report.hints():
        console.print(f"[yellow]hint:[/yellow] {hint}")
    console.print(f"wrote {report.out}, {report.rejects}, {report.report} in {seconds:.1f} s")


@clean_app.command("llava")
def llava_cmd(
    input: str = _INPUT,
    images: str = _IMAGES,
    out: str = _OUT,
    rejects: str | None = _REJECTS,
    report: str | None = _REPORT,
    min_side: int = _MIN_SIDE,
    max_aspect: float = _MAX_ASPECT,
    max_pixels: int = _MAX_PIXELS,
    workers: int | None = _WORKERS,
    out_format: str = _OUT_FORMAT,
    input_format: str = _INPUT_FORMAT,
    max_text_chars: int = _MAX_TEXT,
    rekey: bool = _REKEY,
    engine: str = _ENGINE,
    ray_address: str | None = _RAY_ADDRESS,
    quiet: bool = _QUIET,
) -> None:
    """Clean LLaVA / ShareGPT records, or the messages shape of LLaMA-Factory and MindSpeed-MM."""
    from mmdata.clean.sources.llava import clean_llava

    _run(quiet, clean_llava, engine, ray_address, input_path=input, images_root=images, out_path=out, rejects_path=rejects,
         report_path=report, min_side=min_side, max_aspect=max_aspect, max_pixels=max_pixels, workers=workers,
         out_format=out_format, input_format=input_format, max_text_chars=max_text_chars, rekey=rekey)


@clean_app.command("coco")
def coco_cmd(
    captions: str = _CAPTIONS,
    images: str = _IMAGES,
    out: str = _OUT,
    rejects: str | None = _REJECTS,
    report: str | None = _REPORT,
    min_side: int = _MIN_SIDE,
    max_aspect: float = _MAX_ASPECT,
    max_pixels: int = _MAX_PIXELS,
    per_caption: bool = _PER_CAPTION,
    prompts: Path | None = _PROMPTS,
    workers: int | None = _WORKERS,
    out_format: str = _OUT_FORMAT,
    engine: str = _ENGINE,
    ray_address: str | None = _RAY_ADDRESS,
    quiet: bool = _QUIET,
) -> None:
    """Clean a COCO captions file into one conversation per image (or per caption)."""
    from mmdata.clean.sources.coco import clean_coco
    from mmdata.clean.prompts import load_prompts

    _run(quiet, clean_coco, engine, ray_address, captions_path=captions, images_root=images, out_path=out, rejects_path=rejects,
         report_path=report, per_caption=per_caption, prompts=load_prompts(prompts) if prompts else None,
         min_side=min_side, max_aspect=max_aspect, max_pixels=max_pixels, workers=workers, out_format=out_format)


@clean_app.command("hf")
def hf_cmd(
    input: str = typer.Argument(..., help="A parquet file, or a folder of them (LLaVA-OneVision-Data or the_cauldron layout)."),
    out: str = _OUT,
    images_store: str | None = typer.Option(None, "--images-store",
                                             help="Where the embedded images are written, by content (default: OUT.images beside OUT)."),
    rejects: str | None = _REJECTS,
    report: str | None = _REPORT,
    min_side: int = _MIN_SIDE,
    max_aspect: float = _MAX_ASPECT,
    max_pixels: int = _MAX_PIXELS,
    workers: int | None = _WORKERS,
    out_format: str = _OUT_FORMAT,
    max_text_chars: int = _MAX_TEXT,
    rekey: bool = _REKEY,
    rows: int = typer.Option(256, "--rows", help="Parquet rows read at a time (memory, not output)."),
    engine: str = _ENGINE,
    ray_address: str | None = _RAY_ADDRESS,
    quiet: bool = _QUIET,
) -> None:
    """Clean a Hugging Face parquet dataset with embedded images; then `mmdata shard OUT --images OUT.images`."""
    from mmdata.clean.sources.hf import clean_hf

    _run(quiet, clean_hf, engine, ray_address, input_path=input, out_path=out, images_store=images_store, rejects_path=rejects,
         report_path=report, min_side=min_side, max_aspect=max_aspect, max_pixels=max_pixels, workers=workers,
         out_format=out_format, max_text_chars=max_text_chars, rekey=rekey, rows=rows)


def register(app: typer.Typer) -> None:
    """Add the ``clean`` group to the ``mmdata`` app."""
    app.add_typer(clean_app, name="clean")
