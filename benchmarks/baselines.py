"""Baselines the benchmarks and tests measure the loader's packers against (not used at run time)."""

from __future__ import annotations

from bisect import bisect_left

import numpy as np


def greedy_knapsack(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """LLaMA-Factory-style greedy knapsack (baseline for benchmarks): fill one row at a time with the
    largest remaining item that still fits, until none fits."""
    order = np.argsort(np.asarray(lengths), kind="stable").tolist()
    vals = [int(lengths[i]) for i in order]
    rows: list[list[int]] = []
    while vals:
        row: list[int] = []
        free = capacity
        while vals:
            k = bisect_left(vals, free + 1) - 1
            if k < 0:
                break
            free -= vals.pop(k)
            row.append(order.pop(k))
        if not row:  # an item longer than capacity: its own row (callers filter these first)
            row.append(order.pop(0))
            vals.pop(0)
        rows.append(sorted(row))
    return rows


def packing_efficiency(lengths: np.ndarray, rows: list[list[int]], capacity: int) -> float:
    """Share of row slots holding real tokens: sum(lengths) / (rows x capacity)."""
    if not rows:
        return 1.0
    total = int(np.asarray(lengths, dtype=np.int64)[np.concatenate([np.asarray(r) for r in rows])].sum())
    return total / (len(rows) * capacity)
