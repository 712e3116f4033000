"""Token-budget bin packing: best-fit decreasing with a per-row image cap.

Pure index arithmetic over length arrays (no I/O), so a whole epoch can be planned from the shard
index alone. Best-fit decreasing places each sample, longest first, into the open row whose free
space is the smallest that still holds it; a row that reached the image cap only takes text-only
samples. Over a window of a few thousand samples this wastes well under 0.5% of the tokens.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

import numpy as np


class _OpenRows:
    """Open rows grouped by free space: a sorted list of distinct free sizes plus a bucket each."""

    __slots__ = ("caps", "buckets")

    def __init__(self) -> None:
        self.caps: list[int] = []
        self.buckets: dict[int, list[int]] = {}

    def add(self, cap: int, row: int) -> None:
        bucket = self.buckets.get(cap)
        if bucket is None:
            self.buckets[cap] = [row]
            insort(self.caps, cap)
        else:
            bucket.append(row)

    def take(self, k: int, pos: int) -> int:
        """Remove and return row at bucket position ``pos`` of the ``k``-th free size."""
        cap = self.caps[k]
        bucket = self.buckets[cap]
        row = bucket.pop(pos)
        if not bucket:
            del self.buckets[cap]
            del self.caps[k]
        return row


def best_fit_decreasing(
    lengths: np.ndarray,
    images: np.ndarray | None,
    capacity: int,
    max_images: int | None = None,
) -> list[list[int]]:
    """Pack items into rows of at most ``capacity`` tokens and ``max_images`` images.

    Returns rows as lists of item indices, each row's items in ascending index order (the caller's
    order, e.g. a seeded permutation), rows in the order they were opened. Every item must satisfy
    ``lengths[i] <= capacity`` and ``images[i] <= max_images``; ties in length keep index order,
    so the result is a pure function of the inputs.
    """
    lens, imgs, cap_img = _check(lengths, images, capacity, max_images)
    if len(lens) == 0:
        return []

    order = np.argsort(-lens, kind="stable").tolist()
    lens_l = lens.tolist()
    imgs_l = imgs.tolist()
    rows: list[list[int]] = []
    row_free: list[int] = []
    row_imgs: list[int] = []
    room = _OpenRows()  # rows that can still take an image
    full = _OpenRows()  # rows at the image cap: text-only items only

    for i in order:
        length = lens_l[i]
        m = imgs_l[i]
        best_row = -1
        if m == 0:
            # Smallest free size >= length among both groups.
            k1 = bisect_left(room.caps, length)
            k2 = bisect_left(full.caps, length)
            c1 = room.caps[k1] if k1 < len(room.caps) else None
            c2 = full.caps[k2] if k2 < len(full.caps) else None
            if c1 is not None and (c2 is None or c1 <= c2):
                best_row = room.take(k1, -1)
            elif c2 is not None:
                best_row = full.take(k2, -1)
        else:
            k = bisect_left(room.caps, length)
            caps = room.caps
            while k < len(caps):
                bucket = room.buckets[caps[k]]
                found = -1
                for pos in range(len(bucket) - 1, -1, -1):
                    if row_imgs[bucket[pos]] + m <= cap_img:
                        found = pos
                        break
                if found >= 0:
                    best_row = room.take(k, found)
                    break
                k += 1
        if best_row < 0:
            best_row = len(rows)
            rows.append([i])
            row_free.append(capacity - length)
            row_imgs.append(m)
        else:
            rows[best_row].append(i)
            row_free[best_row] -= length
            row_imgs[best_row] += m
        free = row_free[best_row]
        if free > 0:
            (room if row_imgs[best_row] < cap_img else full).add(free, best_row)

    for r in rows:
        r.sort()
    return rows


def pack_fill(
    lengths: np.ndarray,
    images: np.ndarray | None,
    capacity: int,
    max_images: int | None = None,
) -> list[list[int]]:
    """Pack items into rows of at most ``capacity`` tokens and ``max_images`` images, one row at a time.

    A minimum-slack variant of best-fit decreasing: while a row has much room, it takes the longest
    remaining item that leaves either no gap or a gap some remaining item can still fill; near the
    end of the row it looks for the pair of items that fills the gap exactly. Leaves ~0.3% slack at
    4096 tokens on LLaVA-like lengths where best-fit decreasing leaves ~0.7%. Same contract as
    :func:`best_fit_decreasing`; equal lengths are taken in index order, so it is deterministic.
    """
    lens, imgs, cap_img = _check(lengths, images, capacity, max_images)
    n = len(lens)
    if n == 0:
        return []
    switch = int(2 * np.median(lens))  # below this much room, try exact pairs
    if max_images is None:
        return _fill_uncapped(lens.tolist(), capacity, switch)
    return _fill_capped(lens.tolist(), imgs.tolist(), capacity, cap_img, switch)


def _fill_capped(lens: list[int], imgs: list[int], capacity: int, cap_img: int, switch: int) -> list[list[int]]:
    """:func:`pack_fill` with an image cap: one sorted length list per image count."""
    stacks: dict[tuple[int, int], list[int]] = {}
    for i in range(len(lens) - 1, -1, -1):
        stacks.setdefault((imgs[i], lens[i]), []).append(i)
    classes = sorted({m for m, _ in stacks})
    avail = {m: sorted(length for mm, length in stacks if mm == m) for m in classes}
    left = len(lens)

    def take(m: int, length: int) -> int:
        st = stacks[(m, length)]
        i = st.pop()
        if not st:
            del stacks[(m, length)]
            lst = avail[m]
            del lst[bisect_left(lst, length)]
        return i

    def longest(limit: int, room: int) -> tuple[int, int] | None:
        """(length, images) of the longest item <= limit with images <= room; ties: more images."""
        best = None
        for m in classes:
            if m > room:
                break
            lst = avail[m]
            k = bisect_right(lst, limit) - 1
            if k >= 0 and (best is None or lst[k] >= best[0]):
                best = (lst[k], m)
        return best

    rows: list[list[int]] = []
    while left:
        gap, room, row = capacity, cap_img, []
        while True:
            usable = [m for m in classes if m <= room and avail[m]]
            if not usable:
                break
            smallest = min(avail[m][0] for m in usable)
            if gap < smallest:
                break
            top = longest(gap, room)
            ok = top
            if 0 < gap - top[0] < smallest:
                ok = longest(gap - smallest, room)
            picks = [ok] if ok is not None and (gap > switch or gap - ok[0] >= smallest) else None
            if picks is None:
                # exact-ish pair over the usable lengths, each length taken from its fewest-image class
                fewest: dict[int, int] = {}
                for m in reversed(usable):
                    for length in avail[m]:
                        if length <= gap:
                            fewest[length] = m
                union = sorted(fewest)
                best, pair = 0, None
                i, j = 0, len(union) - 1
                while i <= j:
                    x, y = union[i], union[j]
                    if x + y > gap:
                        j -= 1
                        continue
                    two_ok = i != j or len(stacks[(fewest[x], x)]) >= 2
                    if two_ok and fewest[x] + fewest[y] <= room and x + y > best:
                        best, pair = x + y, [(x, fewest[x]), (y, fewest[y])]
                        if best == gap:
                            break
                    i += 1
                picks = pair if pair is not None and best > top[0] else [top]
            for length, m in picks:
                row.append(take(m, length))
                gap -= length
                room -= m
                left -= 1
        if not row:
            raise RuntimeError("packer made no progress")
        row.sort()
        rows.append(row)
    return rows


def _fill_uncapped(lens: list[int], capacity: int, switch: int) -> list[list[int]]:
    """:func:`pack_fill` without an image cap, on a sorted list of distinct lengths (no numpy per step)."""
    stacks: dict[int, list[int]] = {}
    for i in range(len(lens) - 1, -1, -1):  # pop() then yields the lowest index first
        stacks.setdefault(lens[i], []).append(i)
    avail = sorted(stacks)

    def take(length: int) -> int:
        st = stacks[length]
        i = st.pop()
        if not st:
            del stacks[length]
            del avail[bisect_left(avail, length)]
        return i

    rows: list[list[int]] = []
    while avail:
        gap, row = capacity, []
        while avail and gap >= avail[0]:
            smallest = avail[0]
            k = bisect_right(avail, gap) - 1
            longest = avail[k]
            ok = longest
            if 0 < gap - longest < smallest:  # would leave a gap nothing can fill: take a shorter one
                k2 = bisect_right(avail, gap - smallest) - 1
                ok = avail[k2] if k2 >= 0 else None
            if ok is not None and (gap > switch or gap - ok >= smallest):
                picks = [ok]
            else:
                best, pa, pb = 0, 0, 0  # best pair sum <= gap (two pointers over the sorted lengths)
                i, j = 0, k
                while i <= j:
                    a, b = avail[i], avail[j]
                    total = a + b
                    if total > gap:
                        j -= 1
                        continue
                    if i == j and len(stacks[a]) < 2:
                        break
                    if total > best:
                        best, pa, pb = total, a, b
                        if total == gap:
                            break
                    i += 1
                picks = [pa, pb] if best > longest else [longest]
            for length in picks:
                row.append(take(length))
                gap -= length
        row.sort()
        rows.append(row)
    return rows


def _check(lengths, images, capacity, max_images):
    lens = np.asarray(lengths, dtype=np.int64)
    n = len(lens)
    imgs = np.zeros(n, dtype=np.int64) if images is None else np.asarray(images, dtype=np.int64)
    cap_img = max_images if max_images is not None else 1 << 30
    if n:
        if int(lens.max()) > capacity or int(lens.min()) <= 0:
            raise ValueError(f"item lengths must lie in 1..{capacity}")
        if int(imgs.max()) > cap_img:
            raise ValueError(f"an item has more than {cap_img} images")
    if max_images is None:
        imgs = np.zeros(n, dtype=np.int64)  # no cap: one class, no image bookkeeping
    return lens, imgs, cap_img


PACKERS = {"fill": pack_fill, "bfd": best_fit_decreasing}
DEFAULT_PACKER = "fill"  # what the loader plans with unless told otherwise
