"""Pre-shard planning: what a cleaned JSON/JSONL will cost in tokens and how well it will pack,
from image headers alone (no decode), before any shard is written.

Per sample: image tokens = the rule's ``fit`` of the header size (after EXIF orientation), exactly what
``mmdata shard`` will store with the same flags; text tokens = chars/4 (an estimate) or, with a
tokenizer, the loader's template-rendered count; length = text + image tokens. Packing is the loader's
best-fit decreasing over windows of ``pack_window`` samples, as the loader plans an epoch.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmdata.errors import InputError
from mmdata.inspect.dataset import image_paths, record_turns, text_chars
from mmdata.inspect.problems import Problem
from mmdata.inspect.stats import IntHist
from mmdata.io import iter_json_records
from mmdata.models.qwen2vl import DEFAULT_MAX_IMAGE_TOKENS
from mmdata.models.rules import get_rule

CHUNK = 4096
DEFAULT_WINDOW = 8192  # the loader's PlanConfig.window_samples
MAX_LISTED = 50  # problems kept with details; all are counted


def probe_header(path: str) -> tuple[int, int] | str:
    """(width, height) after EXIF orientation from the header alone, or a reason string."""
    from PIL import Image

    from mmdata.images import TRANSPOSED_ORIENTATIONS, exif_orientation

    try:
        with Image.open(path) as img:
            w, h = img.size
            if exif_orientation(img) in TRANSPOSED_ORIENTATIONS:
                w, h = h, w
            return w, h
    except FileNotFoundError:
        return "missing_image"
    except IsADirectoryError:
        return "missing_image"
    except Exception:
        return "unreadable_image"


def _probe_many(paths: list[str]) -> list[tuple[int, int] | str]:
    return [probe_header(p) for p in paths]


def pack_rows(lengths: np.ndarray, seq_len: int, window: int | None = DEFAULT_WINDOW) -> tuple[int, str]:
    """Packed rows needed for ``lengths`` (all <= seq_len), packing each window of samples on its own
    with the loader's own default packer (``mmdata.text.pack`` is torch-free)."""
    from mmdata.text.pack import DEFAULT_PACKER, PACKERS

    pack = PACKERS[DEFAULT_PACKER]
    n = len(lengths)
    step = window or max(n, 1)
    rows = sum(len(pack(lengths[a: a + step], None, seq_len)) for a in range(0, n, step))
    return rows, f"{DEFAULT_PACKER} packer of mmdata.text.pack, windows of {step} samples"


class _TextCounter:
    """Text tokens of records: chars/4 by default, or the loader's template count with a tokenizer."""

    def __init__(self, tokenizer: str | None, template: str):
        self.template = template
        self._tok = None
        self._count = None
        if tokenizer is None:
            self.method = "estimate: ceil(text chars / 4), <image> removed; give --tokenizer for exact counts"
            return
        # Exact counts as the loader renders them (mmdata.text: torch-free, below the loader).
        from mmdata.text.templates import text_token_count
        from mmdata.text.tokenizer import load_tokenizer

        self._tok = load_tokenizer(tokenizer)
        self._count = text_token_count
        self.method = f"tokenizer {self._tok.path} with the {template} template (image pads excluded)"

    def counts(self, recs: list[dict[str, Any]], chars: np.ndarray) -> np.ndarray:
        if self._tok is None:
            return (chars + 3) // 4
        out = np.zeros(len(recs), dtype=np.int64)
        for i, r in enumerate(recs):
            try:
                out[i] = self._count(r, self._tok, self.template)
            except Exception:  # a record the template cannot render: fall back to the estimate
                out[i] = (int(chars[i]) + 3) // 4
        return out


@dataclass
class _Forecast:
    """What plan_records accumulates chunk by chunk: header cache, reasons, per-sample lengths, histograms."""

    root: Path
    rule: Any
    max_res: int
    max_image_tokens: int
    text: _TextCounter
    workers: int = 1
    pool: ProcessPoolExecutor | None = None
    cache: dict[str, tuple[int, int] | str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    lengths: list[np.ndarray] = field(default_factory=list)
    h_img: IntHist = field(default_factory=IntHist)
    h_txt: IntHist = field(default_factory=IntHist)
    h_len: IntHist = field(default_factory=IntHist)
    h_per_image: IntHist = field(default_factory=IntHist)
    long_side: IntHist = field(default_factory=IntHist)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    downscaled: int = 0
    records: int = 0

    def problem(self, reason: str, where: str, rid: str, detail: str) -> None:
        self.reasons[reason] += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(Problem(where, rid, detail, reason))

    def probe(self, chunk: list[tuple[str, int, Any]]) -> None:
        """Read the headers of the chunk's images not seen yet (in worker processes when there are several)."""
        want = sorted({str(self.root / p) for _, _, rec in chunk for p in image_paths(rec)} - self.cache.keys())
        if not want:
            return
        if self.pool is not None:
            step = max(1, len(want) // (self.workers * 4))
            parts = [want[i: i + step] for i in range(0, len(want), step)]
            res = [x for part in self.pool.map(_probe_many, parts) for x in part]
        else:
            res = _probe_many(want)
        self.cache.update(zip(want, res))

    def image_tokens(self, rec: dict) -> tuple[list[int], tuple[str, str] | None]:
        """The record's per-image tokens as the writer would store them, or (reason, detail) of the first
        image that cannot be stored."""
        toks = []
        for p in image_paths(rec):
            hdr = self.cache[str(self.root / p)]
            if isinstance(hdr, str):
                return toks, (hdr, f"{p}: {hdr.replace('_', ' ')}")
            fit = self.rule.fit(hdr[0], hdr[1], self.max_res, self.max_image_tokens)
            if fit is None:
                return toks, ("over_token_budget", f"{p}: {hdr[0]}x{hdr[1]} cannot fit {self.max_image_tokens} tokens")
            toks.append(fit.tokens)
            self.long_side.add(np.array([max(fit.width, fit.height)]))
            self.sizes[(fit.width, fit.height)] += 1
            self.downscaled += (fit.width, fit.height) != hdr
        return toks, None

    def add(self, chunk: list[tuple[str, int, Any]]) -> None:
        """Fold one chunk of records into the forecast."""
        self.probe(chunk)
        good_recs, good_chars, good_img = [], [], []
        for src, idx, rec in chunk:
            toks, why = self.image_tokens(rec)
            if why is not None:
                self.problem(why[0], Path(src).name, str(rec.get("id", f"{Path(src).stem}-{idx}")), why[1])
                continue
            self.h_per_image.add(np.array(toks, dtype=np.int64))
            good_recs.append(rec)
            good_chars.append(text_chars(rec))
            good_img.append(sum(toks))
        if not good_recs:
            return
        img = np.array(good_img, dtype=np.int64)
        txt = self.text.counts(good_recs, np.array(good_chars, dtype=np.int64))
        self.h_img.add(img)
        self.h_txt.add(txt)
        self.h_len.add(txt + img)
        self.lengths.append(txt + img)

    def read(self, paths: list[str | Path]) -> None:
        """Every record of ``paths``, in chunks of CHUNK; non-records are counted as malformed."""
        chunk: list[tuple[str, int, Any]] = []
        for path in paths:
            for idx, _line, rec in iter_json_records(path):
                self.records += 1
                if not isinstance(rec, dict) or not record_turns(rec):
                    self.problem("malformed", Path(path).name, str(idx), "not a conversation record")
                    continue
                chunk.append((str(path), idx, rec))
                if len(chunk) >= CHUNK:
                    self.add(chunk)
                    chunk = []
        self.add(chunk)


def plan_records(
    paths: list[str | Path] | str | Path,
    images_root: str | Path,
    max_res: int = 448,
    max_image_tokens: int = DEFAULT_MAX_IMAGE_TOKENS,
    rule: str = "qwen2vl",
    seq_len: int = 2048,
    tokenizer: str | None = None,
    template: str = "qwen2vl",
    workers: int = 1,
    pack_window: int | None = DEFAULT_WINDOW,
) -> dict[str, Any]:
    """Token budget and packing forecast for cleaned record file(s), as one JSON-able dict."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    root = Path(images_root)
    if not root.is_dir():
        raise InputError(root, "images root is not a directory")
    if seq_len <= 0:
        raise InputError(None, f"--seq-len must be positive, got {seq_len}")
    try:
        r = get_rule(rule)
    except ValueError as e:
        raise InputError(None, str(e)) from None
    fc = _Forecast(root, r, max_res, max_image_tokens, _TextCounter(tokenizer, template), workers,
                   ProcessPoolExecutor(max_workers=workers) if workers > 1 else None)
    try:
        fc.read(paths)
    finally:
        if fc.pool is not None:
            fc.pool.shutdown()
    out = {"inputs": [str(p) for p in paths], "images_root": str(root),
           "options": {"rule": rule, "max_res": max_res, "max_image_tokens": max_image_tokens, "seq_len": seq_len,
                       "pack_window": pack_window}}
    return {**out, **_summary(fc, seq_len, pack_window)}


def _summary(fc: _Forecast, seq_len: int, pack_window: int | None) -> dict[str, Any]:
    """The forecast's figures: counts, token histograms, sizes, the share over seq_len and the packing."""
    all_len = np.concatenate(fc.lengths) if fc.lengths else np.zeros(0, dtype=np.int64)
    usable = len(all_len)
    over = int((all_len > seq_len).sum())
    fits = all_len[(all_len <= seq_len) & (all_len > 0)]
    rows, method = pack_rows(fits, seq_len, pack_window) if len(fits) else (0, "none (no sample fits)")
    eff = float(fits.sum()) / (rows * seq_len) if rows else 0.0
    empty = {"min": 0, "p50": 0, "mean": 0.0, "p95": 0, "max": 0}
    return {
        "records": fc.records,
        "samples": usable,
        "unusable": dict(sorted(fc.reasons.items())),
        "images": fc.h_per_image.n,
        "images_downscaled": fc.downscaled,
        "text_tokens_method": fc.text.method,
        "image_tokens": fc.h_img.summary() or empty,
        "image_tokens_total": fc.h_img.total,
        "image_tokens_per_image": fc.h_per_image.summary() or empty,
        "text_tokens": fc.h_txt.summary() or empty,
        "sample_tokens": fc.h_len.summary() or empty,
        "total_tokens": fc.h_len.total,
        "stored_long_side": fc.long_side.summary() or empty,
        "common_sizes": [{"size": f"{w}x{h}", "count": c}
                         for (w, h), c in sorted(fc.sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:8]],
        "over_seq_len": {"samples": over, "share": round(over / usable, 6) if usable else 0.0},
        "packing": {"seq_len": seq_len, "method": method, "samples_packed": int(len(fits)), "rows": rows,
                    "samples_per_row": round(len(fits) / rows, 3) if rows else 0.0,
                    "efficiency": round(eff, 6), "padding_tokens": int(rows * seq_len - fits.sum()) if rows else 0},
        "errors": [p.to_dict() for p in fc.problems],
    }
