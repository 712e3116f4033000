"""The packed loader: follows the epoch plan, reads each row's samples by offset, yields batches.

``PackedLoader`` is what a training loop holds: an endless (or ``epochs=N``) iterator of packed
rows for one data-parallel rank, with ``state_dict()`` / ``load_state_dict()`` for exact resume,
also onto another world size. Workers of a torch DataLoader build the rank's rows round robin and
the DataLoader hands them back in order, so the output does not depend on ``num_workers``.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property, partial
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmdata import storage
from mmdata.errors import InputError, MMDataError
from mmdata.procs import die_with_parent
from mmdata.format.sample import SampleError, ShardSample
from mmdata.format.tar import TarFormatError, parse_sample
from mmdata.loader.batch import Document, RowSpec, collate_row, decode_images
from mmdata.format.check import fix_hint
from mmdata.loader.devdecode import say_once
from mmdata.loader.lengths import MANIFEST, ShardIndex, check_shards, _index_text_tokens_made_with, cache_dir_for, read_index, text_tokens
from mmdata.loader.plan import NoSampleFits, PlanConfig, Planner, SetLengths, iter_positions, normalize_position
from mmdata.models.family import family_for_rule
from mmdata.models.patches import PatchProcessor
from mmdata.models.qwen2vl import DEFAULT_MAX_IMAGE_TOKENS
from mmdata.text.pack import DEFAULT_PACKER
from mmdata.text.templates import get_template

log = logging.getLogger("mmdata.loader")
STATE_FORMAT = "mmdata.loader.state"
STATE_VERSION = 1


@dataclass(frozen=True)
class LoaderConfig:
    """Everything that shapes the batches (docs/DESIGN.md "Loader API")."""

    seq_len: int = 2048
    template: str = "qwen2vl"
    max_images_per_seq: int | None = None
    seed: int = 0
    shuffle: bool = True
    overlong: str = "drop"  # or "truncate": cut the text, never inside an image block
    pixel_dtype: str = "float32"  # "uint8": normalise on the device (normalize_pixels); "images": decoded
    # images in the batch, patches made on the device (pixel_values_from_images)
    image_decode: str = "cpu"  # "device" (with pixel_dtype="images"): the workers ship the JPEG bytes and
    # the trainer decodes them on the accelerator (mmdata.loader.devdecode.decode_shipped)
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    bad_sample_budget: int = 100
    pad_to_seq_len: bool = False
    window_samples: int = 8192  # samples packed together (a window of whole shards)
    packer: str = DEFAULT_PACKER  # "fill" or "bfd" (best-fit decreasing)
    epochs: int | None = None  # None: endless
    prefetch_factor: int = 2
    cache_dir: str | None = None
    # Shard sets on object storage (s3://): "cache" downloads whole shards ahead of the plan into
    # shard_cache_dir (--cache-dir; None: $MMDATA_CACHE or ~/.cache/mmdata), at most cache_limit
    # bytes (--cache-limit); "ranges" fetches the next rows' samples with concurrent ranged reads.
    remote_read: str = "cache"
    shard_cache_dir: str | None = None
    cache_limit: int = 10 * 10**9

    def __post_init__(self) -> None:
        if self.pixel_dtype not in ("float32", "uint8", "images"):
            raise ValueError(f"pixel_dtype must be 'float32', 'uint8' or 'images', got {self.pixel_dtype!r}")
        if self.image_decode not in ("cpu", "device"):
            raise ValueError(f"image_decode must be 'cpu' or 'device', got {self.image_decode!r}")
        if self.image_decode == "device" and self.pixel_dtype != "images":
            raise ValueError(f"image_decode='device' needs pixel_dtype='images' (the patches are made after the "
                             f"decode, on the device), got pixel_dtype={self.pixel_dtype!r}")
        if self.bad_sample_budget < 0:
            raise ValueError("bad_sample_budget must be >= 0")
        if self.remote_read not in ("cache", "ranges"):
            raise ValueError(f"remote_read must be 'cache' or 'ranges', got {self.remote_read!r}")

    def processor(self) -> PatchProcessor:
        """The Qwen2-VL-style patch processor these patch sizes describe."""
        return PatchProcessor(self.patch_size, self.merge_size, self.temporal_patch_size)

    def plan_config(self) -> PlanConfig:
        return PlanConfig(seq_len=self.seq_len, max_images_per_seq=self.max_images_per_seq, seed=self.seed,
                          shuffle=self.shuffle, overlong=self.overlong, window_samples=self.window_samples,
                          packer=self.packer)


@dataclass
class ShardSet:
    """One shard folder: its index, per-sample lengths and the pixel budget its images were made for."""

    index: ShardIndex
    text_tokens: np.ndarray  # int64 [N], -1 = unreadable / unrenderable json
    max_pixels: int
    pretokenized: bool = False  # the shards' ``ids.npy`` members were made with this tokenizer and template

    @cached_property
    def lengths(self) -> np.ndarray:
        """Planned tokens per sample (computed once: the row builder looks one up per sample)."""
        return np.where(self.text_tokens >= 0, self.text_tokens + self.index.image_tokens, 0)

    def plan_input(self) -> SetLengths:
        return SetLengths(self.lengths, self.index.n_images, self.index.shard_idx, self.index.image_tokens,
                          fingerprint=self.index.index_sha256)


def open_shard_set(root: str | Path, tokenizer, config: LoaderConfig) -> ShardSet:
    """Read a shard folder's index and lengths (counting text tokens once if the index lacks them)."""
    index = read_index(root)
    opts = index.manifest.get("options", {}) if isinstance(index.manifest, dict) else {}
    rule = opts.get("rule", "qwen2vl")
    try:
        family = family_for_rule(rule)
    except ValueError:
        family = None
    if family is None or family.processor is None:
        raise InputError(storage.join(index.root, MANIFEST), f"shards made with --rule {rule}: the packed loader emits "
                                                        f"Qwen2-VL patches and needs --rule qwen2vl or qwen-vl")
    max_tokens = int(opts.get("max_image_tokens") or DEFAULT_MAX_IMAGE_TOKENS)
    max_pixels = config.processor().max_pixels(max(max_tokens, int(index.image_tokens.max(initial=0))))
    made_with = _index_text_tokens_made_with(index.manifest)
    pretokenized = made_with == (getattr(tokenizer, "sha256", None), config.template)
    lost = check_shards(index)  # a missing or replaced shard is an InputError here
    cdir = cache_dir_for(index, config.cache_dir, config.shard_cache_dir)
    tt = text_tokens(index, tokenizer, config.template, cdir)
    if lost:
        tt = _leave_out_truncated(tt, lost, config.bad_sample_budget)
    return ShardSet(index, tt, max_pixels, pretokenized)


def _leave_out_truncated(tt: np.ndarray, lost: dict[str, np.ndarray], budget: int) -> np.ndarray:
    """Leave the samples cut off truncated shards out of the plan, within the bad-sample budget."""
    n = sum(len(rows) for rows in lost.values())
    path, rows = max(lost.items(), key=lambda kv: len(kv[1]))
    if n > budget:
        raise InputError(path, f"truncated: {n} sample(s) past the end of damaged shards, over bad_sample_budget "
                               f"{budget}; {fix_hint(Path(path).parent)}")
    for p, r in lost.items():
        log.warning("%s is truncated: %d sample(s) past its end left out (within bad_sample_budget %d)", p, len(r), budget)
    tt = tt.copy()
    for r in lost.values():
        tt[r] = -1
    return tt


class BadSample(Exception):
    """A sample that cannot be used; the row is built without it."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def parse_members(buf: bytes) -> list[tuple[str, bytes]]:
    """(name, data) of the tar members in ``buf`` (one sample's bytes), every header checked by the
    format's one strict tar reader."""
    try:
        return [(m.name, m.data) for m in parse_sample(buf)]
    except TarFormatError as e:
        raise BadSample("unreadable_member", str(e)) from None


def _split_sample(key: str, members: list[tuple[str, bytes]]) -> tuple[bytes, list[bytes], bytes | None]:
    """The json, the images in ``<image>`` order (``key.jpg`` or ``key.0.jpg``, ``key.1.jpg``, ...) and
    the pre-tokenised ``key.ids.npy`` (None when the shard has none)."""
    js = ids = None
    imgs: list[tuple[int, bytes]] = []
    for name, data in members:
        base = name.rsplit("/", 1)[-1]
        stem, _, rest = base.partition(".")
        if stem != key:
            raise BadSample("unreadable_member", f"member {name!r} does not belong to key {key}")
        if rest == "json":
            js = data
        elif rest == "ids.npy":
            ids = data
        else:
            parts = rest.split(".")
            k = int(parts[0]) if len(parts) == 2 and parts[0].isdigit() else 0
            imgs.append((k, data))
    if js is None:
        raise BadSample("unreadable_member", "no .json member")
    imgs.sort(key=lambda t: t[0])
    return js, [d for _, d in imgs], ids


_IDS_HEADER = re.compile(rb"\{'descr': '<i4', 'fortran_order': False, 'shape': \(2, (\d+)\), \} *\n")


def _load_ids(data: bytes) -> np.ndarray | None:
    """The int32 [2, L] array of an ``ids.npy`` member, or None if it is not one. The writer's exact
    npy v1 header is matched directly (``np.load`` parses it with ``ast``: 0.1 ms a sample)."""
    if data[:8] == b"\x93NUMPY\x01\x00":
        start = 10 + int.from_bytes(data[8:10], "little")
        m = _IDS_HEADER.fullmatch(data, 10, start)
        if m is not None and len(data) == start + 8 * int(m.group(1)):
            return np.frombuffer(data, dtype="<i4", offset=start).reshape(2, -1)
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if arr.dtype != np.int32 or arr.ndim != 2 or arr.shape[0] != 2:
        return None
    return arr


class RowBuilder:
    """Reads and encodes samples, builds rows. One per worker (it keeps shard files open)."""

    def __init__(self, sets: list[ShardSet], tokenizer, config: LoaderConfig):
        self.sets = sets
        self.tok = tokenizer
        self.cfg = config
        mrope = get_template(config.template).mrope  # image blocks marked the way M-RoPE indexes them
        self.proc = config.processor()
        self.spec = RowSpec(seq_len=config.seq_len, pad_id=int(tokenizer.pad_id),
                            vision_start_id=tokenizer.vision_start_id if mrope else None,
                            image_pad_id=tokenizer.image_pad_id if mrope else None,
                            merge_size=config.merge_size, pad_to_seq_len=config.pad_to_seq_len,
                            pixel_dtype=config.pixel_dtype, temporal_patch_size=config.temporal_patch_size,
                            patch_size=config.patch_size)
        self._files: dict[tuple[int, int], object] = {}
        self.shared_memory = get_worker_info() is not None
        self.remote = None  # RemoteReads when a set is on object storage (set by RowDataset)
        self.stale_ids = 0  # pre-tokenised ids that did not match (the sample was encoded instead)

    def _file(self, set_id: int, shard: int):
        f = self._files.get((set_id, shard))
        if f is None:
            if len(self._files) >= 64:
                old = next(iter(self._files))
                self._files.pop(old).close()
            ix = self.sets[set_id].index
            if self.remote is not None and self.remote.cache is not None and self.remote.remote[set_id]:
                f = self.remote.open(set_id, shard)  # a local copy in the shard cache
            else:
                f = storage.open_input(storage.join(ix.root, ix.shards[shard]))
            self._files[(set_id, shard)] = f
        return f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def read(self, set_id: int, i: int) -> tuple[ShardSample, list[bytes], bytes | None]:
        ix = self.sets[set_id].index
        try:
            buf = self.remote.take(set_id, i) if self.remote is not None else None
            if buf is None:
                f = self._file(set_id, int(ix.shard_idx[i]))
                f.seek(int(ix.offset[i]))
                buf = f.read(int(ix.nbytes[i]))
        except OSError as e:
            raise BadSample("unreadable_member", f"cannot read: {e.strerror or e}") from None
        if len(buf) < int(ix.nbytes[i]):
            raise BadSample("unreadable_member", "shard is shorter than the index says")
        js, imgs, ids = _split_sample(str(ix.keys[i]), parse_members(buf))
        try:
            return ShardSample.from_json(js), imgs, ids
        except SampleError as e:
            raise BadSample(e.reason, e.detail) from None

    def encode(self, set_id: int, i: int) -> tuple[Document | None, bool]:
        """The sample as a document (None if truncation left nothing to learn), and whether it was cut."""
        from mmdata.text.templates import TemplateError, encode_conversation

        s = self.sets[set_id]
        ix = s.index
        cfg = self.cfg
        sample, img_bytes, ids_member = self.read(set_id, i)
        rec, metas = sample.record, sample.images
        if len(metas) != len(img_bytes):
            raise BadSample("image_count_mismatch", f"{len(img_bytes)} image member(s), json lists {len(metas)} images")
        factor = self.proc.factor
        sizes, tokens = [], []
        for k, m in enumerate(metas):
            try:
                sh, sw = m.height, m.width
                h, w = self.proc.target_size(sh, sw, s.max_pixels)
            except (TypeError, ValueError):
                raise BadSample("broken_json", f"image {k}: no usable width/height/image_tokens") from None
            claimed = m.image_tokens
            if (h, w) != (sh, sw):  # the loader never resizes: the shard must hold what the model sees
                raise BadSample("image_size_mismatch", f"image {k}: stored {sw}x{sh}, the processor feeds {w}x{h} "
                                                       f"(shards from before CONTRACT s.3's exact sizes: re-run mmdata shard)")
            t = (h // factor) * (w // factor)
            if t != claimed:
                raise BadSample("image_token_mismatch", f"image {k}: {w}x{h} gives {t} tokens, json claims {claimed}")
            sizes.append((h, w))
            tokens.append(t)
        if sum(tokens) != int(ix.image_tokens[i]):
            raise BadSample("image_token_mismatch", f"json images sum to {sum(tokens)} tokens, index says {int(ix.image_tokens[i])}")
        pre = self._pretokenized(s, i, ids_member, tokens) if ids_member is not None and s.pretokenized else None
        if pre is not None:
            ids, labels = pre
        else:
            try:
                enc = encode_conversation(rec, self.tok, cfg.template, tokens)
            except TemplateError as e:
                raise BadSample(e.reason, e.detail) from None
            ids, labels = enc.input_ids, enc.labels
        cut = False
        if len(ids) > cfg.seq_len:
            if cfg.overlong != "truncate":
                raise BadSample("length_mismatch", f"{len(ids)} tokens, more than seq_len {cfg.seq_len} (index lengths are stale?)")
            ids, labels, kept = self._truncate(ids, labels, tokens)
            sizes, img_bytes, cut = sizes[:kept], img_bytes[:kept], True
            if not np.any(labels[1:] != -100):
                return None, True
        elif len(ids) != int(s.lengths[i]):
            raise BadSample("length_mismatch", f"{len(ids)} tokens, the plan counted {int(s.lengths[i])} (index text_tokens stale?)")
        grids = [self.proc.grid(h, w) for h, w in sizes]  # decoded with the row (build: decode_images)
        return Document(str(ix.ids[i]), ids, labels, list(img_bytes), sizes, grids), cut

    def _pretokenized(self, s: ShardSet, i: int, data: bytes, tokens: list[int]):
        """(input_ids, labels) from the shard's ``ids.npy`` when they are consistent with the json and the
        plan (pad count, first label, planned length); else None, counted in ``stale_ids``."""
        arr = _load_ids(data)
        pad = self.spec.image_pad_id if self.spec.image_pad_id is not None else self.tok.image_placeholder_id
        if (arr is None or arr.shape[1] != int(s.lengths[i]) or arr.shape[1] == 0 or arr[1, 0] != -100
                or (pad is None and sum(tokens)) or (pad is not None and int(np.count_nonzero(arr[0] == pad)) != sum(tokens))):
            self.stale_ids += 1
            return None
        return arr[0], arr[1]

    def _truncate(self, ids: np.ndarray, labels: np.ndarray, tokens: list[int]):
        """Cut to seq_len; a cut inside an image block moves before the block (the image is dropped)."""
        cut = self.cfg.seq_len
        kept = len(tokens)
        pad = self.tok.image_placeholder_id if self.spec.image_pad_id is None else self.spec.image_pad_id
        if tokens and pad is not None:
            pos = np.flatnonzero(ids == pad)
            ends_c = np.cumsum(tokens)
            first = pos[np.concatenate([[0], ends_c[:-1]])]
            last = pos[ends_c - 1]
            vs, ve = self.tok.vision_start_id, self.tok.vision_end_id
            kept = 0
            for a, b in zip(first.tolist(), last.tolist()):
                start = a - 1 if a > 0 and vs is not None and ids[a - 1] == vs else a
                end = b + 2 if b + 1 < len(ids) and ve is not None and ids[b + 1] == ve else b + 1
                if end <= cut:
                    kept += 1
                    continue
                if start < cut:
                    cut = start
                break
        return ids[:cut], labels[:cut], kept

    def build(self, set_id: int, samples: np.ndarray) -> tuple[dict, dict]:
        """One row: batch dict plus what happened (bad samples, truncations) for the main process.
        The row's images are decoded together, straight into one buffer, after its text is encoded."""
        docs: list[Document] = []
        kept: list[tuple[int, int, bool]] = []  # (position in the row, sample, truncated) per doc
        bad: list[tuple[int, tuple[str, str, str, str]]] = []
        dropped = 0
        ix = self.sets[set_id].index
        stale0 = self.stale_ids
        where = lambda i: (ix.shards[int(ix.shard_idx[i])], str(ix.keys[i]))  # noqa: E731
        for pos, i in enumerate(samples.tolist()):
            try:
                doc, cut = self.encode(set_id, i)
            except BadSample as e:
                bad.append((pos, (*where(i), e.reason, e.detail)))
                continue
            if doc is None:
                dropped += 1
            else:
                docs.append(doc)
                kept.append((pos, i, cut))
        images, shipped, failed, host = self._images(docs)
        for j, detail in failed:
            pos, i, _ = kept[j]
            bad.append((pos, (*where(i), "decode_error", detail)))
        if failed:
            gone = {j for j, _ in failed}
            docs = [d for j, d in enumerate(docs) if j not in gone]
            kept = [k for j, k in enumerate(kept) if j not in gone]
        bad.sort(key=lambda b: b[0])  # in row order, as the samples were met
        if self.remote is not None:
            self.remote.row_done(self._files)
        batch = collate_row(docs, self.spec, images, self.shared_memory, shipped)
        info = {"bad": [b for _, b in bad], "docs": len(docs), "truncated": sum(c for _, _, c in kept),
                "dropped": dropped, "set": set_id, "real_tokens": batch["num_real_tokens"],
                "loss_tokens": batch["num_loss_tokens"], "stale_ids": self.stale_ids - stale0}
        if host:
            info["host_decoded"] = host
        return batch, info

    def _images(self, docs: list[Document]):
        """(decoded images, None, failed, []) as today; with ``image_decode="device"`` (None, the stored
        JPEGs to ship, failed, why some images were decoded here after all)."""
        if self.cfg.image_decode == "device":
            from mmdata.loader.devdecode import ship_images

            shipped, failed, host = ship_images(docs, self.shared_memory)
            return None, shipped, failed, host
        images, failed = decode_images(docs, self.shared_memory and self.spec.pixel_dtype == "images")
        return images, None, failed, []


class RowDataset(IterableDataset):
    """The rows one rank builds, from a global position on; each DataLoader worker builds every W-th."""

    def __init__(self, sets: list[ShardSet], tokenizer, config: LoaderConfig, planner: Planner,
                 rank: int, world_size: int, epoch: int, row: int):
        self.sets, self.tokenizer, self.config, self.planner = sets, tokenizer, config, planner
        self.rank, self.world_size, self.epoch, self.row = rank, world_size, epoch, row

    def __iter__(self):
        info = get_worker_info()
        j, w = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:  # our own process: many tiny encodes, no thread pool per worker
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        builder = RowBuilder(self.sets, self.tokenizer, self.config)
        start, stride = self.row + self.rank + j * self.world_size, self.world_size * w
        positions = iter_positions(self.planner, self.epoch, start, stride, self.config.epochs)
        try:
            if any(storage.is_remote(s.index.root) for s in self.sets):
                from mmdata.loader.remote import remote_rows

                positions = remote_rows(builder, self.sets, self.config, self.planner, positions, self.epoch, start,
                                        stride)
            for e, r in positions:
                set_id, samples = self.planner.epoch(e).row(r)
                batch, meta = builder.build(set_id, samples)
                meta["epoch"], meta["row"] = e, r
                yield batch, meta
        finally:
            if builder.remote is not None:
                builder.remote.close()
            builder.close()


def _identity(x):
    return x


def _worker_init(parent: int, worker_id: int) -> None:
    """A loader worker dies with the process that started it (SIGKILLed trainer: no orphan left)."""
    die_with_parent(parent)


@dataclass
class _Counters:
    rows: int = 0
    samples: int = 0
    bad_samples: int = 0
    dropped: int = 0
    truncated: int = 0
    real_tokens: int = 0
    loss_tokens: int = 0
    stale_ids: int = 0  # samples whose pre-tokenised ids were inconsistent and were encoded instead
    bad_by_reason: dict = field(default_factory=dict)


@dataclass
class _Progress:
    """Where the rank stands and what it has seen; shared by the loader and its running iterator
    (the iterator never holds the loader, so dropping either closes the workers promptly)."""

    rank: int
    world_size: int
    budget: int
    unplannable: int
    epoch: int = 0
    row: int = 0
    consumed: int = 0
    counters: _Counters = field(default_factory=_Counters)
    seen_bad: set = field(default_factory=set)

    def account(self, meta: dict) -> None:
        c = self.counters
        self.epoch, self.row = meta["epoch"], meta["row"] - self.rank + self.world_size
        self.consumed += self.world_size
        c.rows += 1
        c.samples += meta["docs"]
        c.truncated += meta["truncated"]
        c.dropped += meta["dropped"]
        c.real_tokens += meta["real_tokens"]
        c.loss_tokens += meta["loss_tokens"]
        c.stale_ids += meta.get("stale_ids", 0)
        for why in meta.get("host_decoded", ()):
            say_once(f"image_decode='device': {why} is decoded on the CPU in the loader workers")
        for shard, key, reason, detail in meta["bad"]:
            c.bad_samples += 1
            c.bad_by_reason[reason] = c.bad_by_reason.get(reason, 0) + 1
            if (shard, key) not in self.seen_bad:
                self.seen_bad.add((shard, key))
                log.warning("bad sample skipped: %s key %s: %s: %s", shard, key, reason, detail)
            if c.bad_samples + self.unplannable > self.budget:
                raise MMDataError(f"bad sample budget exceeded: {c.bad_samples + self.unplannable} bad samples "
                                  f"> bad_sample_budget {self.budget} "
                                  f"(last: shard {shard} key {key}: {reason}: {detail})")


def _stream(ds: RowDataset, num_workers: int, prefetch_factor: int, progress: _Progress):
    kwargs = {"prefetch_factor": prefetch_factor, "persistent_workers": False} if num_workers > 0 else {}
    dl = DataLoader(ds, batch_size=None, num_workers=num_workers, collate_fn=_identity,
                    worker_init_fn=partial(_worker_init, os.getpid()), **kwargs)
    for batch, meta in dl:
        progress.account(meta)
        yield batch


class PackedLoader:
    """Packed rows for one data-parallel rank; exact, elastic resume. See docs/loader.md."""

    def __init__(self, paths, tokenizer=None, config: LoaderConfig | None = None, rank: int = 0,
                 world_size: int = 1, num_workers: int = 2, weights: list[float] | None = None):
        from mmdata.text.tokenizer import load_tokenizer

        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.config = config or LoaderConfig()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(None)
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.sets = [open_shard_set(p, self.tokenizer, self.config) for p in paths]
        try:
            self.planner = Planner([s.plan_input() for s in self.sets], self.config.plan_config(), weights,
                                   cache_dir=cache_dir_for(self.sets[0].index, self.config.cache_dir,
                                                           self.config.shard_cache_dir))
        except NoSampleFits as e:  # name the folder(s) and say what to change
            roots = ", ".join(str(s.index.root) for s in self.sets)
            fix = "" if e.shortest is None else "; raise seq_len" + (
                " or max_images_per_seq" if self.config.max_images_per_seq is not None else "")
            raise NoSampleFits(f"{roots}: {e}{fix}", samples=e.samples, shortest=e.shortest,
                               seq_len=e.seq_len) from None
        self._iter = None
        where = [f"{storage.join(s.index.root, s.index.shards[int(s.index.shard_idx[i])])} key {s.index.keys[i]}"
                 for s in self.sets for i in np.flatnonzero(s.text_tokens < 0)]
        for w in where[:20]:
            log.warning("bad sample left out of the plan: %s: unreadable or unrenderable json", w)
        self.unplannable = len(where)
        if self.unplannable > self.config.bad_sample_budget:
            raise MMDataError(f"{self.unplannable} samples have unreadable or unrenderable json (first: {where[0]}), "
                              f"over bad_sample_budget {self.config.bad_sample_budget}")
        self._progress = _Progress(rank, world_size, self.config.bad_sample_budget, self.unplannable)

    # ---- plan facts ---------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.planner.fingerprint

    def len_epoch_rows(self, epoch: int | None = None) -> int:
        """Global packed rows in ``epoch`` (default: the current one); this rank gets every world_size-th."""
        return self.planner.epoch(self.epoch if epoch is None else epoch).num_rows

    @property
    def rows_per_epoch(self) -> int:
        return self.len_epoch_rows()

    @property
    def epoch(self) -> int:
        return normalize_position(self.planner, self._progress.epoch, self._progress.row)[0]

    # ---- iteration ----------------------------------------------------------------------------
    def __iter__(self):
        self.close()
        pr = self._progress
        e, r = normalize_position(self.planner, pr.epoch, pr.row)
        self.planner.epoch(e)  # plan in the parent: forked workers inherit it
        ds = RowDataset(self.sets, self.tokenizer, self.config, self.planner, self.rank, self.world_size, e, r)
        self._iter = _stream(ds, self.num_workers, self.config.prefetch_factor, pr)
        return self._iter

    def __next__(self):
        if self._iter is None:
            iter(self)
        return next(self._iter)

    def close(self) -> None:
        """Stop the running iteration and its workers (also done by ``iter()`` and ``load_state_dict``)."""
        if self._iter is not None:
            self._iter.close()
            self._iter = None

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Position in the plan (global rows consumed), seed, plan fingerprint and counters."""
        pr = self._progress
        e, r = normalize_position(self.planner, pr.epoch, pr.row)
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "seed": self.config.seed,
                "fingerprint": self.fingerprint, "epoch": e, "row": r, "consumed_rows": pr.consumed,
                "world_size": self.world_size, "counters": asdict(pr.counters)}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken; any world size works when the global batch is
        constant (every rank consumed the same number of rows). Arithmetic only: nothing is re-read."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise MMDataError("not a mmdata loader state (format key missing)")
        if state.get("version") != STATE_VERSION:
            raise MMDataError(f"loader state version {state.get('version')} is not supported (expected {STATE_VERSION})")
        if state["seed"] != self.config.seed:
            raise MMDataError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.config.seed}")
        if state["fingerprint"] != self.fingerprint:
            raise MMDataError(f"loader state belongs to another plan (fingerprint {state['fingerprint']} != "
                              f"{self.fingerprint}): the shards, lengths, seq_len, packing options or the planning algorithm (PLAN_VERSION) changed")
        self.close()
        pr = self._progress
        pr.epoch, pr.row = int(state["epoch"]), int(state["row"])
        pr.consumed = int(state.get("consumed_rows", 0))
        pr.counters = _Counters(**state.get("counters", {}))

    def seek(self, consumed_rows: int) -> None:
        """Continue after ``consumed_rows`` global rows from the very start (epoch 0, row 0): the
        resume path for stacks that only keep a counter (MindSpeed-MM's ``consumed_train_samples``
        counts packed rows). Plans each epoch it passes (cached), decodes nothing."""
        if consumed_rows < 0:
            raise ValueError("consumed_rows must be >= 0")
        self.close()
        pr = self._progress
        pr.epoch, pr.row = normalize_position(self.planner, 0, int(consumed_rows))
        pr.consumed = int(consumed_rows)

    save_state = state_dict
    restore_state = load_state_dict

    def stats(self) -> dict:
        """Counters of what this rank yielded, plus the planned packing efficiency of the epoch."""
        c = asdict(self._progress.counters)
        c["unplannable"] = self.unplannable
        c["packing_efficiency"] = c["real_tokens"] / max(1, c["rows"] * self.config.seq_len)
        plan = self.planner.epoch(self.epoch)
        c["planned_efficiency"] = plan.efficiency(self.config.seq_len)
        c["planned_dropped"] = plan.dropped
        c["planned_truncated"] = plan.truncated
        return c
