"""Pictures of a data set: a contact sheet of sample images (id, tokens, stored size under each) and
histograms of image tokens and text lengths. PNGs, written atomically."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from mmdata.errors import InputError
from mmdata.inspect.dataset import as_int, record_turns
from mmdata.inspect.samples import Shown, pick_samples
from mmdata.io import atomic_write

BG = (246, 246, 246)


def _readable(path: Path) -> None:
    """Give a finished picture the usual file mode (the temp file of an atomic write is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


INK = (20, 20, 20)
DIM = (95, 95, 95)
BAD = (200, 30, 30)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _thumb(data: bytes, box: tuple[int, int]) -> Image.Image | None:
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", box)
        img = img.convert("RGB")
        img.thumbnail(box, Image.Resampling.LANCZOS)
        return img
    except Exception:
        return None


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, lines: int) -> list[str]:
    out: list[str] = []
    words = text.split()
    cur = ""
    for w in words:
        t = f"{cur} {w}".strip()
        if draw.textlength(t, font=font) <= width:
            cur = t
            continue
        out.append(cur)
        cur = w
        if len(out) == lines:
            break
    if len(out) < lines and cur:
        out.append(cur)
    return [_fit_text(draw, x, font, width) for x in out[:lines]]


def _labels(s: Shown) -> tuple[str, str, str]:
    rec = s.record or {}
    entries = [e for e in rec.get("images", []) if isinstance(e, dict)] if isinstance(rec.get("images"), list) else []
    tokens = rec.get("image_tokens", sum(as_int(e.get("image_tokens")) for e in entries))
    if len(entries) == 1:
        size = f"{entries[0].get('width')}x{entries[0].get('height')}"
    elif entries:
        size = f"{len(entries)} images"
    else:
        size = "text only"
    return str(rec.get("id", s.key)), f"{tokens} image tokens · {size}", f"{s.shard} · {s.key}"


def _draw_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, s: Shown, x: int, y: int, thumb: int,
               fonts: tuple[Any, Any]) -> None:
    big, small = fonts
    box = (x, y, x + thumb, y + thumb)
    draw.rectangle(box, fill=(228, 228, 228))
    if s.error is not None and s.record is None:
        draw.line(box, fill=BAD, width=3)
        draw.line((x, y + thumb, x + thumb, y), fill=BAD, width=3)
        for i, line in enumerate(_wrap(draw, s.error, small, thumb - 12, 3)):
            draw.text((x + 6, y + 6 + i * 16), line, fill=BAD, font=small)
    elif s.images:
        k = min(len(s.images), 3)
        w = (thumb - 4 * (k - 1)) // k
        for i, (_, data) in enumerate(s.images[:k]):
            im = _thumb(data, (w, thumb))
            cx = x + i * (w + 4)
            if im is None:
                draw.line((cx, y, cx + w, y + thumb), fill=BAD, width=3)
                draw.text((cx + 4, y + 4), "does not decode", fill=BAD, font=small)
                continue
            sheet.paste(im, (cx + (w - im.width) // 2, y + (thumb - im.height) // 2))
    else:
        turns = record_turns(s.record or {})
        text = turns[0][1] if turns else ""
        for i, line in enumerate(_wrap(draw, "“" + text + "”", small, thumb - 16, 8)):
            draw.text((x + 8, y + 10 + i * 17), line, fill=DIM, font=small)
    ident, tok, where = _labels(s)
    ty = y + thumb + 4
    draw.text((x, ty), _fit_text(draw, ident, big, thumb), fill=INK, font=big)
    draw.text((x, ty + 18), _fit_text(draw, tok, small, thumb), fill=INK, font=small)
    draw.text((x, ty + 34), _fit_text(draw, where, small, thumb), fill=DIM, font=small)


def contact_sheet(paths: list[str | Path], out_png: str | Path, n: int = 16, thumb: int = 200,
                  cols: int | None = None) -> dict[str, Any]:
    """A grid PNG of ``n`` samples spread over the data set: image(s), id, image tokens, stored size, shard
    and key under each. Returns {path, samples, width, height}."""
    shown = pick_samples(paths, n)
    if not shown:
        raise InputError(None, "no samples to draw")
    cols = cols or min(len(shown), max(1, math.ceil(math.sqrt(len(shown)))))
    rows = math.ceil(len(shown) / cols)
    pad, label_h = 12, 52
    cell_w, cell_h = thumb + pad, thumb + label_h + pad
    sheet = Image.new("RGB", (pad + cols * cell_w, pad + rows * cell_h), BG)
    draw = ImageDraw.Draw(sheet)
    fonts = (_font(14), _font(12))
    for i, s in enumerate(shown):
        r, c = divmod(i, cols)
        _draw_cell(sheet, draw, s, pad + c * cell_w, pad + r * cell_h, thumb, fonts)
    out = Path(out_png)
    with atomic_write(out) as f:
        sheet.save(f, "PNG", optimize=True)
    _readable(out)
    return {"path": str(out), "samples": len(shown), "width": sheet.width, "height": sheet.height}


def plot_histograms(hists: dict[str, Any], out_png: str | Path, title: str = "") -> dict[str, Any]:
    """Histograms (matplotlib, Agg) of image tokens per sample, text length, images per sample and the
    stored long side, from exact histograms (``stats.histograms``). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise InputError(None, "--plot needs matplotlib (pip install 'mmdata[plot]' or pip install matplotlib)") from None
    text_key = "text_tokens" if "text_tokens" in hists else "text_chars"
    panels = [("image_tokens", "image tokens per sample"),
              (text_key, "text tokens per sample" if text_key == "text_tokens" else "text characters per sample"),
              ("n_images", "images per sample"), ("long_side", "stored image longer side (px)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, label) in zip(axes.ravel(), panels):
        h = hists.get(key)
        if h is None or h.n == 0:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(label)
            continue
        vals, cnts = h.values_counts()
        if key == "n_images" or len(vals) <= 30:
            ax.bar(vals, cnts, width=0.8 if key == "n_images" else max(1.0, (vals.max() - vals.min()) / 60),
                   color="#4C72B0")
        else:
            ax.hist(vals, bins=50, weights=cnts, color="#4C72B0")
        s = h.summary()
        for q, style in (("p50", "-"), ("p95", "--")):
            ax.axvline(s[q], color="#C44E52", linestyle=style, linewidth=1.2, label=f"{q} {s[q]}")
        ax.set_title(f"{label}  (n={h.n:,}, mean {s['mean']:.1f}, max {s['max']})", fontsize=10)
        ax.set_ylabel("samples" if key != "long_side" else "images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "n_images":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(out_png)
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=100)
    _readable(out)
    plt.close(fig)
    return {"path": str(out)}
