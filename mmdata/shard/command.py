"""`mmdata shard`: flags (CONTRACT s.3) -> ``write_shards``; progress and a summary table on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mmdata.units import parse_size
from mmdata.models.qwen2vl import DEFAULT_MAX_IMAGE_TOKENS

__all__ = ["register", "parse_size"]

def shard_cmd(
    inputs: List[str] = typer.Argument(..., help="Cleaned conversation files (JSON array or JSON Lines; local or s3://), in order."),
    images: str = typer.Option(..., "--images", help="Root folder (local or s3://bucket/prefix) the image paths are relative to."),
    out: str = typer.Option(..., "--out", help="Output folder (local or s3://bucket/prefix) for shard-NNNNNN.tar, index.parquet, manifest.json."),
    max_res: int = typer.Option(448, "--max-res", help="Longer side of every stored image at most this."),
    max_image_tokens: int = typer.Option(DEFAULT_MAX_IMAGE_TOKENS, "--max-image-tokens", help="Visual-token budget per image under --rule."),
    rule: str = typer.Option("qwen2vl", "--rule", help="Token rule: qwen2vl, qwen-vl, llava, internvl."),
    samples_per_shard: Optional[int] = typer.Option(None, "--samples-per-shard", help="Records per job (default 1000): job k takes input records k*N..k*N+N-1, so a shard holds at most N samples; keys are record positions."),
    max_shard_bytes: str = typer.Option("1GB", "--max-shard-bytes", help="At most this many bytes per shard (1GB, 500MB...); a job over it is split into consecutive shards."),
    quality: int = typer.Option(90, "--quality", help="JPEG quality of re-encoded images."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Image processes (default: all cores). Output is the same for any value."),
    resume: bool = typer.Option(False, "--resume", help="Keep the complete shards of a killed run and write the rest."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Local tokenizer.json or folder (the loader's): pre-tokenise each sample ({key}.ids.npy) and fill the index's text_tokens, so the loader does not tokenise at train time."),
    template: str = typer.Option("qwen2vl", "--template", help="Chat template of the pre-tokenised ids and text_tokens (with --tokenizer)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary."),
    records_per_shard: Optional[int] = typer.Option(None, "--records-per-shard", help="The same option as --samples-per-shard (its earlier name); giving both with different values is an error."),
    engine: str = typer.Option("local", "--engine", help="local (a process pool) or ray (tasks on a Ray cluster); the output is the same."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join with --engine ray: auto (default) or HOST:PORT."),
) -> None:
    """Write webdataset shards capped to a visual-token budget, with an index and a manifest."""
    from rich.console import Console

    from mmdata.shard.writer import write_shards

    console = Console(stderr=True)
    kw = dict(max_res=max_res, max_image_tokens=max_image_tokens, rule=rule, samples_per_shard=samples_per_shard,
              max_shard_bytes=parse_size(max_shard_bytes), quality=quality, workers=workers, resume=resume,
              tokenizer=tokenizer, template=template, records_per_shard=records_per_shard, engine=engine,
              ray_address=ray_address)
    if quiet:
        report = write_shards(inputs, images, out, **kw)
    else:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("sharding"), TextColumn("{task.fields[records]:,} records"),
                      TextColumn("{task.fields[samples]:,} samples"), TextColumn("{task.fields[rejected]:,} rejected"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("shard", records=0, samples=0, rejected=0)

            def progress(records: int, samples: int, rejected: int) -> None:
                bar.update(task, records=records, samples=samples, rejected=rejected)

            report = write_shards(inputs, images, out, progress=progress, **kw)
    if not quiet:
        _summary(console, report)


def _summary(console, report) -> None:
    from rich.table import Table

    table = Table(title=f"mmdata shard -> {report.out_dir}", title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("records read", f"{report.records:,}")
    table.add_row("[green]samples[/green]", f"{report.samples:,}")
    table.add_row("[red]rejected[/red]", f"{report.rejected:,}")
    for code, n in report.reasons.items():
        table.add_row(f"  {code}", f"{n:,}")
    table.add_row("images", f"{report.images:,}")
    table.add_row("  stored unchanged (passthrough)", f"{report.passthrough:,}")
    table.add_row("image tokens", f"{report.image_tokens:,}")
    table.add_row("shards", f"{len(report.shards):,}" + (f" ({report.resumed_shards} kept)" if report.resumed_shards else ""))
    table.add_row("bytes", f"{report.bytes:,}")
    console.print(table)
    rate = report.records / report.seconds if report.seconds else 0.0
    console.print(f"wrote {len(report.shards)} shards, index.parquet, manifest.json, rejects.jsonl "
                  f"in {report.seconds:.1f} s ({rate:,.0f} records/s)")


def register(app: typer.Typer) -> None:
    app.command("shard", help="Write webdataset shards capped to a visual-token budget, with an index.")(shard_cmd)
