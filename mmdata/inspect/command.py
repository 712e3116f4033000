"""`mmdata inspect`: flags (CONTRACT s.4) -> the library; rich tables on stdout, or one JSON object."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from mmdata.errors import InputError
from mmdata.format import names

__all__ = ["register", "run"]

_DIST_ROWS = (("image tokens / sample", "image_tokens"), ("image tokens / image", "image_tokens_per_image"),
              ("text chars / sample", "text_chars"), ("text tokens / sample", "text_tokens"),
              ("images / sample", "images_per_sample"), ("turns / sample", "turns"))
_PLAN_ROWS = (("image tokens / sample", "image_tokens"), ("image tokens / image", "image_tokens_per_image"),
              ("text tokens / sample", "text_tokens"), ("tokens / sample", "sample_tokens"),
              ("stored longer side", "stored_long_side"))


def _is_records(p: Path) -> bool:
    return p.suffix.lower() in (".json", ".jsonl") and p.name != names.MANIFEST


def _human_bytes(n: int) -> str:
    x = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if x < 1000 or unit == "TB":
            return f"{int(x)} B" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1000
    return f"{n} B"  # pragma: no cover


def _dist_table(title: str, rows: tuple[tuple[str, str], ...], data: dict[str, Any]):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("")
    for c in ("min", "p50", "mean", "p95", "max"):
        t.add_column(c, justify="right")
    for label, key in rows:
        d = data.get(key)
        if d:
            t.add_row(label, *(f"{d[c]:,}" if isinstance(d[c], int) else f"{d[c]:,.1f}" for c in
                               ("min", "p50", "mean", "p95", "max")))
    return t


def _print_summary(console, s: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=escape(f"mmdata inspect: {', '.join(s['paths'])}"), title_justify="left", show_header=False)
    t.add_column("")
    t.add_column("", justify="right")
    t.add_row("samples", f"{s['samples']:,}")
    t.add_row("shards", f"{s['shards']:,}")
    t.add_row("bytes", f"{_human_bytes(s['bytes'])} ({s['bytes']:,})")
    t.add_row("images", f"{s['images']:,}")
    t.add_row("image tokens (total)", f"{s['image_tokens_total']:,}")
    if s.get("rejected_at_shard_time"):
        t.add_row("rejected at shard time", f"{s['rejected_at_shard_time']:,}")
    opts = s.get("options")
    if isinstance(opts, dict) and opts:
        t.add_row("shard options", ", ".join(f"{k}={opts[k]}" for k in ("rule", "max_res", "max_image_tokens")
                                            if k in opts))
    t.add_row("stats from", s["stats_from"])
    if isinstance(opts, dict) and opts.get("tokenizer"):
        t.add_row("tokenizer", escape(str(opts["tokenizer"])))
    console.print(t)
    console.print(_dist_table("distributions", _DIST_ROWS, s))
    r = s["resolution"]
    if r["images"]:
        rt = Table(title="resolution (stored images)", title_justify="left", show_header=False)
        rt.add_column("")
        rt.add_column("")
        for label, key in (("longer side", "long_side"), ("shorter side", "short_side")):
            d = r[key]
            rt.add_row(label, f"min {d['min']}  p50 {d['p50']}  p95 {d['p95']}  max {d['max']}")
        if "at_max_res" in r:
            rt.add_row("at --max-res", f"{r['at_max_res']:,} of {r['images']:,} ({r['at_max_res'] / r['images']:.1%})")
        rt.add_row("distinct sizes", f"{r['distinct_sizes']:,}")
        rt.add_row("most common", ", ".join(f"{c['size']} ({c['count']:,})" for c in r["common_sizes"]))
        counts = s.get("images_per_sample_counts", {})
        if counts:
            rt.add_row("images per sample", ", ".join(f"{k}: {v:,}" for k, v in counts.items()))
        console.print(rt)
    if s["sources"]:
        st = Table(title="sources", title_justify="left")
        st.add_column("source")
        st.add_column("samples", justify="right")
        st.add_column("share", justify="right")
        for name, n in s["sources"].items():
            st.add_row(escape(name) or "(none)", f"{n:,}", f"{n / max(s['samples'], 1):.1%}")
        console.print(st)


def _print_plan(console, p: dict[str, Any]) -> None:
    from rich.table import Table

    o = p["options"]
    t = Table(title=escape(f"mmdata inspect (pre-shard plan): {', '.join(p['inputs'])}"), title_justify="left",
              show_header=False)
    t.add_column("")
    t.add_column("")
    t.add_row("records", f"{p['records']:,}")
    t.add_row("usable samples", f"{p['samples']:,}")
    for code, n in p["unusable"].items():
        t.add_row(f"  unusable: {code}", f"{n:,}")
    t.add_row("images (downscaled)", f"{p['images']:,} ({p['images_downscaled']:,})")
    t.add_row("options", f"rule={o['rule']} max_res={o['max_res']} max_image_tokens={o['max_image_tokens']} "
                         f"seq_len={o['seq_len']}")
    t.add_row("text tokens", escape(p["text_tokens_method"]))
    t.add_row("total tokens", f"{p['total_tokens']:,} ({p['image_tokens_total']:,} image)")
    ov = p["over_seq_len"]
    t.add_row(f"over --seq-len {o['seq_len']}", f"{ov['samples']:,} samples ({ov['share']:.2%})")
    pk = p["packing"]
    t.add_row("packing", f"{pk['efficiency']:.2%} efficient: {pk['samples_packed']:,} samples in {pk['rows']:,} rows "
                         f"of {pk['seq_len']} ({pk['samples_per_row']} per row)")
    t.add_row("packer", pk["method"])
    if p["common_sizes"]:
        t.add_row("stored sizes", ", ".join(f"{c['size']} ({c['count']:,})" for c in p["common_sizes"]))
    console.print(t)
    console.print(_dist_table("distributions", _PLAN_ROWS, p))


def _print_samples(console, shown) -> None:
    from rich.text import Text

    for s in shown:
        rec = s.record or {}
        head = Text(f"{s.shard} {s.key}", style="bold")
        if rec:
            head.append(f"  id={rec.get('id')!s}", style="cyan")
            if rec.get("source"):
                head.append(f"  source={rec['source']}")
        console.print(head)
        if s.error:
            console.print(Text(f"  problem: {s.error}", style="red"))
        entries = rec.get("images") if isinstance(rec.get("images"), list) else []
        for i, e in enumerate(entries):
            if isinstance(e, dict):
                console.print(Text(f"  image {i}: {e.get('width')}x{e.get('height')} stored "
                                   f"(source {e.get('orig_width')}x{e.get('orig_height')}), "
                                   f"{e.get('image_tokens')} tokens"))
        from mmdata.inspect.dataset import record_turns

        for role, value in record_turns(rec):
            console.print(Text(f"  {role}: ", style="bold green" if role in ("gpt", "assistant") else "bold"),
                          Text(value.replace("\n", "\n      ")), sep="")
        console.print()


def _shown_json(shown) -> list[dict[str, Any]]:
    return [{"shard": s.shard, "key": s.key, "record": s.record, "error": s.error} for s in shown]


def check_output_path(path: Path, flag: str) -> None:
    """Fail fast (before any work) when ``path`` cannot be written: InputError naming the flag and path."""
    import tempfile

    if path.is_dir():
        raise InputError(path, f"{flag}: is a directory, give a file name such as {path / 'out.png'}")
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the folders below it are made by the write
    if not probe.is_dir():
        raise InputError(path, f"{flag}: cannot write here ({probe} is not a directory)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mmdata-probe.", dir=probe)
    except OSError as e:
        raise InputError(path, f"{flag}: cannot write here ({probe}: {e.strerror or e})") from None
    import os

    os.close(fd)
    os.unlink(tmp)


def run(paths: list[Path], *, as_json: bool = False, verify: bool = False, samples: int = 0,
        contact_sheet_png: Path | None = None, plot_png: Path | None = None, images: Path | None = None,
        max_res: int = 448, max_image_tokens: int = 1280, rule: str = "qwen2vl", seq_len: int = 2048,
        tokenizer: str | None = None, template: str = "qwen2vl", workers: int | None = None) -> int:
    """Do what the flags ask; print tables (or one JSON object); return the exit code (1 when errors)."""
    from rich.console import Console
    from rich.text import Text

    console = Console(soft_wrap=True)
    err = Console(stderr=True)
    recs = [p for p in paths if _is_records(p)]
    if recs and len(recs) != len(paths):
        raise InputError(None, "give either shard folders / tars, or cleaned JSON / JSONL files, not both")
    if recs:
        if images is None:
            raise InputError(None, "pre-shard planning of a JSON/JSONL file needs --images DIR")
        if verify or samples or contact_sheet_png or plot_png:
            raise InputError(None, "--verify, --samples, --contact-sheet and --plot need shards; run them after "
                                   "`mmdata shard`")
        from mmdata.inspect.plan import plan_records

        result = plan_records(recs, images, max_res=max_res, max_image_tokens=max_image_tokens, rule=rule,
                              seq_len=seq_len, tokenizer=tokenizer, template=template, workers=workers or 1)
        if as_json:
            _emit_json(result)
        else:
            _print_plan(console, result)
            _print_errors(console, result["errors"])
        return 1 if result["errors"] else 0

    for flag, out in (("--contact-sheet", contact_sheet_png), ("--plot", plot_png)):
        if out is not None:
            check_output_path(out, flag)
    from mmdata.inspect.stats import histograms, inspect_shards

    result = inspect_shards(paths)
    errors = list(result["errors"])
    if verify:
        problems = _verify_with_bar(paths, workers, err)
        seen = {(e["shard"], e["key"], e["message"]) for e in errors}
        errors += [p.to_dict() for p in problems if (p.shard, p.key, p.message) not in seen]
        result["verified"] = True
        result["errors"] = errors
        found = {(e["shard"], e["key"], e["message"]) for e in errors}
        result["warnings"] = [w for w in result["warnings"] if (w["shard"], w["key"], w["message"]) not in found]
    if samples:
        from mmdata.inspect.samples import pick_samples

        shown = pick_samples(paths, samples)
        result["shown"] = _shown_json(shown)
    if contact_sheet_png is not None:
        from mmdata.inspect.pictures import contact_sheet

        result["contact_sheet"] = contact_sheet(paths, contact_sheet_png)
    if plot_png is not None:
        from mmdata.inspect.pictures import plot_histograms

        result["plot"] = plot_histograms(histograms(paths), plot_png, title=", ".join(map(str, paths)))
    if as_json:
        _emit_json(result)
    else:
        _print_summary(console, result)
        if samples:
            _print_samples(console, shown)
        for key in ("contact_sheet", "plot"):
            if key in result:
                console.print(f"wrote {result[key]['path']}")
        if verify and not errors:
            console.print(f"[green]verified: {result['shards']:,} shards, {result['samples']:,} samples, no problems[/green]")
        _print_errors(console, errors)
    for w in result["warnings"]:
        err.print(Text(f"warning: {w['message']}", style="yellow"), soft_wrap=True)
    return 1 if errors else 0


def _verify_with_bar(paths: list[Path], workers: int | None, err) -> list:
    from mmdata.inspect.verify import verify_shards

    if not err.is_terminal:
        return verify_shards(paths, workers)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("verify", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return verify_shards(paths, workers, progress=progress)


def _print_errors(console, errors: list[dict[str, Any]], limit: int = 200) -> None:
    from rich.text import Text

    if not errors:
        return
    console.print(Text(f"{len(errors)} problem(s):", style="bold red"))
    for e in errors[:limit]:
        where = e["shard"] if e.get("key") is None else f"{e['shard']} {e['key']}"
        console.print(Text(f"  {where}: ", style="red"), Text(f"{e['message']} [{e.get('code', '')}]"), sep="")
    if len(errors) > limit:
        console.print(Text(f"  ... and {len(errors) - limit} more (use --json for all)", style="red"))


def _emit_json(obj: dict[str, Any]) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    sys.stdout.flush()


def inspect_cmd(
    paths: list[Path] = typer.Argument(..., help="Shard folder(s) or .tar shards; or cleaned JSON/JSONL files to plan."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (and nothing else) on stdout."),
    verify: bool = typer.Option(False, "--verify", help="Read every member, decode every image, check every json "
                                "and the manifest's counts and sha256. Exit 1 on any problem."),
    samples: int = typer.Option(0, "--samples", min=0, help="Print N samples spread over the data set."),
    contact_sheet_png: Optional[Path] = typer.Option(None, "--contact-sheet", help="Write a grid of sample images "
                                                     "(id, tokens, stored size) to this PNG."),
    plot_png: Optional[Path] = typer.Option(None, "--plot", help="Write histograms of image tokens and text "
                                            "lengths to this PNG (needs matplotlib)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image root, for planning a cleaned JSON/JSONL."),
    max_res: int = typer.Option(448, "--max-res", min=28, help="Planning: as `mmdata shard --max-res`."),
    max_image_tokens: int = typer.Option(1280, "--max-image-tokens", min=1, help="Planning: as for shard."),
    rule: str = typer.Option("qwen2vl", "--rule", help="Planning: token rule (qwen2vl, qwen-vl, llava, internvl)."),
    seq_len: int = typer.Option(2048, "--seq-len", min=1, help="Planning: packed sequence length."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Planning: a local tokenizer.json or folder "
                                            "for exact text tokens (default: chars/4 estimate)."),
    template: str = typer.Option("qwen2vl", "--template", help="Planning with --tokenizer: chat template."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Processes for --verify / planning "
                                          "(default: all cores for --verify, 1 for planning)."),
) -> None:
    """Summarise shards (from index + manifest), verify them, show samples and pictures; or plan a cleaned
    JSON/JSONL before sharding (token budget and packing at --seq-len, from image headers alone)."""
    code = run(paths, as_json=as_json, verify=verify, samples=samples, contact_sheet_png=contact_sheet_png,
               plot_png=plot_png, images=images, max_res=max_res, max_image_tokens=max_image_tokens, rule=rule,
               seq_len=seq_len, tokenizer=tokenizer, template=template, workers=workers)
    if code:
        raise SystemExit(code)  # not typer.Exit: cli.main runs click with standalone_mode=False, which drops it


def register(app: typer.Typer) -> None:
    """Add the ``inspect`` command to the ``mmdata`` app."""
    app.command("inspect")(inspect_cmd)
