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
from pathlib import Path
from typing import Any

import numpy as np

from mmdata.errors import InputError
from mmdata.inspect.dataset import image_paths, record_turns, text_chars
from mmdata.inspect.problems import Problem
from mmdata.inspect.stats import IntHist
from mmdata.io import iter_json_records
from mmdata.models.rules import get_rule
from mmdata.models.qwen2vl import DEFAULT_MAX_IMAGE_TOKENS

CHUNK = 4096
DEFAULT_WINDOW = 8192  # the loader's PlanConfig.window_samples
MAX_LISTED = 50  # problems kept with details; all are counted


def probe_header(path: str) -> tuple[int, int] | str:
    """(width, height) after EXIF orientation from the header alone, or a reason string."""
    from PIL import Image

    from mmdata.images import exif_orientation

    try:
        with Image.open(path) as img:
            w, h = img.size
            if exif_orientation(img) in (5, 6, 7, 8):
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
        # Exact counts as the loader renders them; the loader package imports torch, so only on request.
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
    text = _TextCounter(tokenizer, template)
    cache: dict[str, tuple[int, int] | str] = {}
    problems: list[Problem] = []
    reasons: Counter[str] = Counter()
    lengths: list[np.ndarray] = []
    n_imgs: list[np.ndarray] = []
    h_img, h_txt, h_len, h_per_image = IntHist(), IntHist(), IntHist(), IntHist()
    long_side, downscaled = IntHist(), 0
    sizes: Counter[tuple[int, int]] = Counter()
    records = 0
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None

    def flush(chunk: list[tuple[str, int, Any]]) -> None:
        nonlocal downscaled
        want = sorted({str(root / p) for _, _, rec in chunk for p in image_paths(rec)} - cache.keys())
        if want:
            if pool is not None:
                step = max(1, len(want) // (workers * 4))
                parts = [want[i: i + step] for i in range(0, len(want), step)]
                res = [x for part in pool.map(_probe_many, parts) for x in part]
            else:
                res = _probe_many(want)
            cache.update(zip(want, res))
        good_recs, good_chars, good_img, good_n = [], [], [], []
        for src, idx, rec in chunk:
            rid = str(rec.get("id", f"{Path(src).stem}-{idx}"))
            toks, why = [], None
            for p in image_paths(rec):
                hdr = cache[str(root / p)]
                if isinstance(hdr, str):
                    why = (hdr, f"{p}: {hdr.replace('_', ' ')}")
                    break
                fit = r.fit(hdr[0], hdr[1], max_res, max_image_tokens)
                if fit is None:
                    why = ("over_token_budget", f"{p}: {hdr[0]}x{hdr[1]} cannot fit {max_image_tokens} tokens")
                    break
                toks.append(fit.tokens)
                long_side.add(np.array([max(fit.width, fit.height)]))
                sizes[(fit.width, fit.height)] += 1
                downscaled += (fit.width, fit.height) != hdr
            if why is not None:
                reasons[why[0]] += 1
                if len(problems) < MAX_LISTED:
                    problems.append(Problem(Path(src).name, rid, why[1], why[0]))
                continue
            h_per_image.add(np.array(toks, dtype=np.int64))
            good_recs.append(rec)
            good_chars.append(text_chars(rec))
            good_img.append(sum(toks))
            good_n.append(len(toks))
        if not good_recs:
            return
        chars = np.array(good_chars, dtype=np.int64)
        img = np.array(good_img, dtype=np.int64)
        txt = text.counts(good_recs, chars)
        h_img.add(img)
        h_txt.add(txt)
        h_len.add(txt + img)
        lengths.append(txt + img)
        n_imgs.append(np.array(good_n, dtype=np.int64))

    try:
        chunk: list[tuple[str, int, Any]] = []
        for path in paths:
            for idx, _line, rec in iter_json_records(path):
                records += 1
                if not isinstance(rec, dict) or not record_turns(rec):
                    reasons["malformed"] += 1
                    if len(problems) < MAX_LISTED:
                        problems.append(Problem(Path(path).name, str(idx), "not a conversation record", "malformed"))
                    continue
                chunk.append((str(path), idx, rec))
                if len(chunk) >= CHUNK:
                    flush(chunk)
                    chunk = []
        flush(chunk)
    finally:
        if pool is not None:
            pool.shutdown()

    all_len = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    usable = len(all_len)
    over = int((all_len > seq_len).sum())
    fits = all_len[(all_len <= seq_len) & (all_len > 0)]
    rows, method = pack_rows(fits, seq_len, pack_window) if len(fits) else (0, "none (no sample fits)")
    eff = float(fits.sum()) / (rows * seq_len) if rows else 0.0
    empty = {"min": 0, "p50": 0, "mean": 0.0, "p95": 0, "max": 0}
    return {
        "inputs": [str(p) for p in paths],
        "images_root": str(root),
        "options": {"rule": rule, "max_res": max_res, "max_image_tokens": max_image_tokens, "seq_len": seq_len,
                    "pack_window": pack_window},
        "records": records,
        "samples": usable,
        "unusable": dict(sorted(reasons.items())),
        "images": h_per_image.n,
        "images_downscaled": downscaled,
        "text_tokens_method": text.method,
        "image_tokens": h_img.summary() or empty,
        "image_tokens_total": h_img.total,
        "image_tokens_per_image": h_per_image.summary() or empty,
        "text_tokens": h_txt.summary() or empty,
        "sample_tokens": h_len.summary() or empty,
        "total_tokens": h_len.total,
        "stored_long_side": long_side.summary() or empty,
        "common_sizes": [{"size": f"{w}x{h}", "count": c}
                         for (w, h), c in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:8]],
        "over_seq_len": {"samples": over, "share": round(over / usable, 6) if usable else 0.0},
        "packing": {"seq_len": seq_len, "method": method, "samples_packed": int(len(fits)), "rows": rows,
                    "samples_per_row": round(len(fits) / rows, 3) if rows else 0.0,
                    "efficiency": round(eff, 6), "padding_tokens": int(rows * seq_len - fits.sum()) if rows else 0},
        "errors": [p.to_dict() for p in problems],
    }
