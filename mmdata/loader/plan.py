"""The epoch plan: which samples form which packed row, in which order, for every epoch.

Built from the shard index alone (lengths and image counts), never from the tars. Epoch ``e`` of a
shard set: a seeded permutation of its shards, cut into windows of about ``window_samples``
samples; the samples of a window are permuted, packed into rows, and the window's rows shuffled.
Several sets are interleaved row by row in proportion to their row counts. Reading then follows
the plan, so a loader position is just ``(epoch, row)``: resume and a new world size are
arithmetic on the same plan.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmdata.errors import MMDataError
from mmdata.text.pack import DEFAULT_PACKER, PACKERS

OVERLONG_POLICIES = ("drop", "truncate")
# The planning algorithm's identity, part of every plan fingerprint: bump it whenever a change to the
# shuffle, the windows or a packer (mmdata.text.pack) could place any sample differently, so a resumed
# run refuses a remapped stream and no stale cached plan is served (tests/test_loader_plan.py pins it).
PLAN_VERSION = 1


class NoSampleFits(MMDataError, ValueError):
    """No sample of the shard sets can be placed in a row (all too long, too many images, or none at
    all). A user error (exit 2 in a CLI); ``shortest`` is the shortest sample in tokens (None: no sample)."""

    def __init__(self, message: str, *, samples: int, shortest: int | None, seq_len: int):
        super().__init__(message)
        self.samples, self.shortest, self.seq_len = samples, shortest, seq_len

    def __reduce__(self):
        return (_rebuild_no_fit, (str(self), self.samples, self.shortest, self.seq_len))


def _rebuild_no_fit(message: str, samples: int, shortest: int | None, seq_len: int) -> "NoSampleFits":
    return NoSampleFits(message, samples=samples, shortest=shortest, seq_len=seq_len)


@dataclass
class SetLengths:
    """What the planner needs of one shard set: per-sample token length and image count, in index
    order, and each sample's shard (samples of one shard are contiguous)."""

    lengths: np.ndarray  # int64 [N]: text tokens + image tokens
    images: np.ndarray  # int64 [N]
    shard_idx: np.ndarray  # int64 [N], non-decreasing
    image_tokens: np.ndarray | None = None  # int64 [N]; lets `truncate` drop samples whose images alone overflow
    fingerprint: str = ""

    def __post_init__(self) -> None:
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self.images = np.asarray(self.images, dtype=np.int64)
        self.shard_idx = np.asarray(self.shard_idx, dtype=np.int64)
        if self.image_tokens is not None:
            self.image_tokens = np.asarray(self.image_tokens, dtype=np.int64)
        if len(self.shard_idx) and np.any(np.diff(self.shard_idx) < 0):
            raise ValueError("index rows must be grouped by shard (shard_idx non-decreasing)")


@dataclass(frozen=True)
class PlanConfig:
    """The knobs that change the plan (and so its fingerprint)."""

    seq_len: int
    max_images_per_seq: int | None = None
    seed: int = 0
    shuffle: bool = True
    overlong: str = "drop"
    window_samples: int = 8192
    packer: str = DEFAULT_PACKER

    def __post_init__(self) -> None:
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {self.overlong!r}")
        if self.packer not in PACKERS:
            raise ValueError(f"packer must be one of {sorted(PACKERS)}, got {self.packer!r}")
        if self.seq_len <= 0 or self.window_samples <= 0:
            raise ValueError("seq_len and window_samples must be positive")


@dataclass
class EpochPlan:
    """Rows of one epoch: row ``r`` holds ``(row_set[r], samples[row_ptr[r]:row_ptr[r+1]])``."""

    epoch: int
    row_ptr: np.ndarray  # int64 [R+1]
    row_set: np.ndarray  # int64 [R]
    samples: np.ndarray  # int64 [sum]: sample index within its set (index order)
    row_tokens: np.ndarray  # int64 [R]: planned tokens per row
    dropped: int = 0  # samples left out by the overlong policy (too long / too many images)
    truncated: int = 0  # samples planned at seq_len, to be cut at read time
    per_set_samples: list[int] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return len(self.row_set)

    def row(self, r: int) -> tuple[int, np.ndarray]:
        return int(self.row_set[r]), self.samples[self.row_ptr[r] : self.row_ptr[r + 1]]

    def efficiency(self, seq_len: int) -> float:
        """Planned real tokens / row slots."""
        return float(self.row_tokens.sum()) / max(1, self.num_rows * seq_len)


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(w) for w in words]]))


class Planner:
    """Deterministic epoch plans for one or more shard sets; ``epoch(e)`` is cached (two epochs)."""

    def __init__(self, sets: list[SetLengths], config: PlanConfig, weights: list[float] | None = None,
                 cache_dir: str | Path | None = None):
        if not sets:
            raise ValueError("no shard sets")
        if weights is not None:
            if len(weights) != len(sets) or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError("weights: one non-negative weight per shard set, not all zero")
        self.sets = sets
        self.config = config
        self.weights = None if weights is None else [float(w) for w in weights]
        self._cache: dict[int, EpochPlan] = {}
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._keep = [self._eligible(s) for s in sets]
        total = sum(len(k) for k in self._keep)
        if self.weights is None:
            self.quotas = [len(k) for k in self._keep]
        else:
            wsum = sum(self.weights)
            self.quotas = [int(round(total * w / wsum)) if len(k) else 0 for w, k in zip(self.weights, self._keep)]
        if sum(self.quotas) == 0:
            raise self._no_fit()

    def _no_fit(self) -> NoSampleFits:
        """Why nothing can be planned, with the figures a user needs to fix it."""
        c = self.config
        n = sum(len(x.lengths) for x in self.sets)
        lens = np.concatenate([x.lengths[x.lengths > 0] for x in self.sets]) if n else np.zeros(0, np.int64)
        if not len(lens):
            msg = "no samples" if n == 0 else f"none of the {n} samples is readable (json unreadable or unrenderable)"
            return NoSampleFits(msg, samples=n, shortest=None, seq_len=c.seq_len)
        shortest = int(lens.min())
        msg = f"no sample fits seq_len {c.seq_len} (shortest sample: {shortest} tokens; {n} samples)"
        if c.max_images_per_seq is not None:
            fewest = int(min(int(x.images.min(initial=0)) for x in self.sets if len(x.images)))
            msg += f" with max_images_per_seq {c.max_images_per_seq} (fewest images in a sample: {fewest})"
        return NoSampleFits(msg, samples=n, shortest=shortest, seq_len=c.seq_len)

    # ---- identity -------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Changes whenever the plan would: data, lengths, and every plan knob except the seed."""
        h = hashlib.sha256()
        c = self.config
        h.update(f"mmdata-plan-v{PLAN_VERSION}".encode())
        h.update(repr((c.seq_len, c.max_images_per_seq, c.shuffle, c.overlong, c.window_samples, c.packer)).encode())
        h.update(repr(self.weights).encode())
        for s in self.sets:
            h.update(s.fingerprint.encode())
            h.update(s.lengths.tobytes())
            h.update(s.images.tobytes())
        return h.hexdigest()[:16]

    # ---- per-set sample streams --------------------------------------------------------------
    def _eligible(self, s: SetLengths) -> np.ndarray:
        """Indices of samples that can be placed at all (the rest are dropped every epoch)."""
        c = self.config
        ok = s.lengths > 0
        if c.max_images_per_seq is not None:
            ok &= s.images <= c.max_images_per_seq
        if c.overlong == "drop":
            ok &= s.lengths <= c.seq_len
        elif s.image_tokens is not None:
            ok &= s.image_tokens < c.seq_len  # truncation never cuts an image: the images alone must fit
        return np.flatnonzero(ok)

    def _pass_windows(self, set_id: int, p: int) -> list[np.ndarray]:
        """Pass ``p`` over set ``set_id``: eligible samples grouped into windows, in reading order."""
        s = self.sets[set_id]
        keep = self._keep[set_id]
        n_shards = int(s.shard_idx[-1]) + 1 if len(s.shard_idx) else 0
        starts = np.searchsorted(s.shard_idx, np.arange(n_shards + 1))
        shard_order = _rng(self.config.seed, 1, p, set_id).permutation(n_shards) if self.config.shuffle else np.arange(n_shards)
        eligible = np.zeros(len(s.lengths), dtype=bool)
        eligible[keep] = True
        windows: list[np.ndarray] = []
        cur: list[np.ndarray] = []
        size = 0
        for sh in shard_order.tolist():
            idx = np.arange(starts[sh], starts[sh + 1])
            idx = idx[eligible[idx]]
            if len(idx) == 0:
                continue
            cur.append(idx)
            size += len(idx)
            if size >= self.config.window_samples:
                windows.append(np.concatenate(cur))
                cur, size = [], 0
        if cur:
            windows.append(np.concatenate(cur))
        if self.config.shuffle:
            windows = [w[_rng(self.config.seed, 2, p, set_id, k).permutation(len(w))] for k, w in enumerate(windows)]
        return windows

    def _set_rows(self, set_id: int, epoch: int) -> tuple[list[np.ndarray], int]:
        """Rows (arrays of sample indices) of set ``set_id`` for ``epoch``, and the truncated count."""
        s = self.sets[set_id]
        c = self.config
        n = len(self._keep[set_id])
        q = self.quotas[set_id]
        if n == 0 or q == 0:
            return [], 0
        lo, hi = epoch * q, (epoch + 1) * q  # positions in the set's endless sample stream
        pack = PACKERS[c.packer]
        rows: list[np.ndarray] = []
        truncated = 0
        for p in range(lo // n, (hi - 1) // n + 1):
            base = p * n
            for k, w in enumerate(self._pass_windows(set_id, p)):
                a, b = max(lo, base), min(hi, base + len(w))
                if a < b:
                    part = w[a - base : b - base]
                    lens = np.minimum(s.lengths[part], c.seq_len)
                    truncated += int(np.count_nonzero(s.lengths[part] > c.seq_len))
                    packed = pack(lens, s.images[part], c.seq_len, c.max_images_per_seq)
                    wrows = [part[np.asarray(r)] for r in packed]
                    if c.shuffle:
                        order = _rng(c.seed, 3, epoch, set_id, p, k).permutation(len(wrows))
                        wrows = [wrows[i] for i in order]
                    rows.extend(wrows)
                base += len(w)
        return rows, truncated

    def epoch(self, e: int) -> EpochPlan:
        """The plan of epoch ``e`` (pure function of data, config, weights and seed); kept in memory
        (two epochs) and, with ``cache_dir``, in a file, so a restart or restore does not re-pack."""
        hit = self._cache.get(e)
        if hit is None:
            hit = self._load(e)
        if hit is None:
            hit = self._make(e)
            self._save(hit)
        if len(self._cache) >= 2:
            self._cache.pop(min(self._cache))
        self._cache[e] = hit
        return hit

    def _file(self, e: int) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"plan-{self.fingerprint}-seed{self.config.seed}-epoch{e}.npz"

    def _load(self, e: int) -> EpochPlan | None:
        f = self._file(e)
        if f is None or not f.is_file():
            return None
        try:
            with np.load(f, allow_pickle=False) as z:
                meta = z["meta"].tolist()
                plan = EpochPlan(epoch=e, row_ptr=z["row_ptr"], row_set=z["row_set"], samples=z["samples"],
                                 row_tokens=z["row_tokens"], dropped=meta[0], truncated=meta[1],
                                 per_set_samples=meta[2:])
        except (OSError, ValueError, KeyError):
            return None
        return plan if len(plan.per_set_samples) == len(self.sets) else None

    def _save(self, plan: EpochPlan) -> None:
        f = self._file(plan.epoch)
        if f is None:
            return
        from mmdata.io import atomic_write

        meta = np.asarray([plan.dropped, plan.truncated, *plan.per_set_samples], dtype=np.int64)
        try:
            with atomic_write(f) as fh:
                np.savez(fh, row_ptr=plan.row_ptr, row_set=plan.row_set, samples=plan.samples,
                         row_tokens=plan.row_tokens, meta=meta)
        except OSError:
            pass  # a cache we cannot write only costs time

    def _make(self, e: int) -> EpochPlan:
        c = self.config
        per_set = [self._set_rows(i, e) for i in range(len(self.sets))]
        keys, sets_of, rows_all = [], [], []
        for i, (rows, _) in enumerate(per_set):
            r = len(rows)
            keys.append((np.arange(r) + 0.5) / max(r, 1))
            sets_of.append(np.full(r, i, dtype=np.int64))
            rows_all.extend(rows)
        key = np.concatenate(keys) if keys else np.zeros(0)
        set_arr = np.concatenate(sets_of) if sets_of else np.zeros(0, dtype=np.int64)
        order = np.lexsort((set_arr, key))  # spread each set evenly over the epoch
        rows_sorted = [rows_all[i] for i in order.tolist()]
        sizes = np.array([len(r) for r in rows_sorted], dtype=np.int64)
        row_ptr = np.zeros(len(rows_sorted) + 1, dtype=np.int64)
        np.cumsum(sizes, out=row_ptr[1:])
        samples = np.concatenate(rows_sorted) if rows_sorted else np.zeros(0, dtype=np.int64)
        row_set = set_arr[order]
        seg_len = np.concatenate([np.minimum(self.sets[si].lengths[r], c.seq_len).sum(keepdims=True) for si, r in zip(row_set.tolist(), rows_sorted)]) if rows_sorted else np.zeros(0, dtype=np.int64)
        dropped = 0
        if self.weights is None:
            dropped = sum(len(s.lengths) - len(k) for s, k in zip(self.sets, self._keep))
        plan = EpochPlan(
            epoch=e,
            row_ptr=row_ptr,
            row_set=row_set.astype(np.int64),
            samples=samples.astype(np.int64),
            row_tokens=seg_len.astype(np.int64),
            dropped=dropped,
            truncated=sum(t for _, t in per_set),
            per_set_samples=[int(sum(len(r) for r in rows)) for rows, _ in per_set],
        )
        return plan


def iter_positions(planner: Planner, epoch: int, row: int, stride: int, end_epoch: int | None = None):
    """Yield ``(epoch, row)`` for global stream positions ``row, row + stride, ...`` starting in
    ``epoch``; the stream runs through epoch after epoch (a row index past an epoch's end carries
    into the next one) and stops before ``end_epoch``."""
    while end_epoch is None or epoch < end_epoch:
        n = planner.epoch(epoch).num_rows
        while row < n:
            yield epoch, row
            row += stride
        row -= n
        epoch += 1


def normalize_position(planner: Planner, epoch: int, row: int) -> tuple[int, int]:
    """Carry a row index past the end of its epoch into the following epochs."""
    while True:
        n = planner.epoch(epoch).num_rows
        if row < n or n == 0 and row == 0:
            return epoch, row
        row -= n
        epoch += 1
