"""Claim: mrope_position_ids (vectorised per image block) is far cheaper than HF get_rope_index's
per-token loop, so computing M-RoPE per document in the loader costs little.

One document: 200 text tokens, two images of 1280 and 256 merged tokens, 200 text tokens. Compares
against a plain-Python transcription of HF's loop (the reference used in tests/test_loader_text.py).

    .venv/bin/python benchmarks/bench_mrope.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmdata.models.rope import mrope_position_ids  # noqa: E402
from tests.test_loader_text import reference_rope  # noqa: E402

VS, PAD, VE = 151652, 151655, 151653


def main() -> None:
    grid = [[1, 64, 80], [1, 32, 32]]
    ids = list(range(200))
    for t, h, w in grid:
        ids += [VS] + [PAD] * (t * h * w // 4) + [VE]
    ids += list(range(200))
    arr = np.array(ids, dtype=np.int32)
    g = np.array(grid)
    assert np.array_equal(mrope_position_ids(arr, g), reference_rope(ids, grid, 2, VS, PAD))
    n = 300
    t0 = time.perf_counter()
    for _ in range(n):
        mrope_position_ids(arr, g)
    a = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(5):
        reference_rope(ids, grid, 2, VS, PAD)
    b = (time.perf_counter() - t0) / 5
    print(f"doc of {len(ids)} tokens, 2 images: mrope_position_ids {a * 1e6:,.0f} us, "
          f"per-token Python loop {b * 1e6:,.0f} us ({b / a:,.0f}x)")


if __name__ == "__main__":
    main()
