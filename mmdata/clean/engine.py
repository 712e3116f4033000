"""The clean engine: rules 1-4 on batches of records (in worker processes or inline), then rules 5-11
and the writes strictly in input order, whatever the source (a LLaVA file, COCO listings, parquet rows).

A source hands the engine `Item`s: the input position of a batch's first record, where its records
came from (a `Span` of the input file, or the parsed objects), and its `Batch` (or the future of one).
The engine hands images to the once-per-path checker and decides each record as soon as its image
verdicts are in. A bounded window of waiting records keeps the pool busy without holding the input.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from xxhash import xxh3_128_digest

from mmdata import storage
from mmdata.clean.checks import ImageChecker
from mmdata.clean.remote import check_reachable
from mmdata.clean.fastread import Span, read_pieces
from mmdata.clean.handoff import Held, Slots, put
from mmdata.clean.report import CleanReport, Sink, dump, out_format_of
from mmdata.errors import InputError
from mmdata.io import check_output_path
from mmdata.records import DEFAULT_MAX_TEXT_CHARS, normalize, to_messages

__all__ = ["Batch", "Decider", "Item", "Originals", "Stream", "StructureOptions", "check_common_args",
           "check_max_text_chars", "check_options", "check_outputs", "frame",
           "sample_key", "structure_objects", "structure_span"]

dumps = orjson.dumps
_WINDOW = 20_000  # records allowed to wait for image verdicts before the reader blocks

Progress = Callable[[int, int], None]  # (records read, images checked)


def check_common_args(images_root: Path, out_path: Path, inputs: list[Path], min_side: int, max_aspect: float,
                      max_pixels: int, out_format: str, others: tuple[Path, ...] = ()) -> str:
    """Validate options shared by every source before any work; returns the OUT file format
    (json/jsonl). Every output (OUT and ``others``: the rejects and report paths) must be writable,
    not a directory, not an input and not another output."""
    if storage.is_remote(images_root):
        check_reachable(images_root)
        if not storage.isdir(images_root):
            raise InputError(images_root, "no images under this prefix")
    elif not images_root.is_dir():
        raise InputError(images_root, "no such images folder" if not images_root.exists() else "not a folder")
    for p in inputs:
        if storage.is_remote(p):
            continue  # staged (checked) by the source before this
        if not p.exists():
            raise InputError(p, "no such file")
        if p.is_dir():
            raise InputError(p, "is a directory, expected a JSON or JSON Lines file")
    fmt = check_outputs(out_path, inputs, others)
    check_options(min_side, max_aspect, max_pixels, out_format)
    return fmt


def check_outputs(out_path: Path, inputs: list[Path], others: tuple[Path, ...] = ()) -> str:
    """OUT's format (json/jsonl); OUT and ``others`` (rejects, report) writable, not inputs, distinct."""
    fmt = out_format_of(out_path)
    seen: dict[str, Path] = {}
    for o in (out_path, *others):
        if storage.is_remote(o):
            check_reachable(o)
            real = os.fspath(o).rstrip("/")
            if any(os.fspath(p) == real for p in inputs):
                raise InputError(o, f"--{_flag(o, out_path, others)} would overwrite the input")
            if real in seen:
                raise InputError(o, f"--{_flag(o, out_path, others)} is the same file as {seen[real]}")
            seen[real] = o
            continue
        try:
            check_output_path(o, tuple(inputs))
        except InputError as e:
            if e.message == "would overwrite the input":
                raise InputError(o, f"--{_flag(o, out_path, others)} would overwrite the input") from None
            raise
        real = os.path.realpath(o)
        if real in seen:
            raise InputError(o, f"--{_flag(o, out_path, others)} is the same file as {seen[real]}")
        seen[real] = o
    return fmt


def check_options(min_side: int, max_aspect: float, max_pixels: int, out_format: str) -> None:
    """The image limits and the output shape."""
    if min_side < 1:
        raise InputError(None, f"--min-side must be >= 1 (got {min_side})")
    if not max_aspect >= 1:
        raise InputError(None, f"--max-aspect must be >= 1 (got {max_aspect})")
    if max_pixels < 1:
        raise InputError(None, f"--max-pixels must be >= 1 (got {max_pixels})")
    if out_format not in ("llava", "messages"):
        raise InputError(None, f"--out-format must be llava or messages (got {out_format!r})")


def check_max_text_chars(n: int) -> None:
    """``--max-text-chars`` must be positive."""
    if n < 1:
        raise InputError(None, f"--max-text-chars must be >= 1 (got {n})")


def _flag(o: Path, out_path: Path, others: tuple[Path, ...]) -> str:
    return "out" if o is out_path else ("rejects" if others and o is others[0] else "report")


def sample_key(images: list[str], conversations: bytes | memoryview, system: str | None = None) -> bytes:
    """What duplicate_sample compares: the image paths in order, the system turn and the output
    ``conversations`` (roles and stripped values) as orjson writes them. 128 bits of XXH3: ~20x
    cheaper than SHA-256 per record (it was a sixth of a text-only run); a collision could only make a
    record a visible duplicate_sample reject, never change a written one."""
    if not images and system is None:  # text-only: the bytes as they are (they hold no raw newline,
        return xxh3_128_digest(conversations)  # so they never equal the three-part form below)
    return xxh3_128_digest(b"%b\n%b\n%b" % (dump(images), dump(system), conversations))


def _conversations_json(rec: dict[str, Any], data: bytes) -> bytes | memoryview:
    """The ``conversations`` value inside ``data`` = orjson.dumps(rec) (a slice when it is the last key,
    as in nearly every record: no second serialisation); JSON strings escape every quote, so the first
    ``"conversations":`` is the key."""
    if len(rec) == 2 + ("image" in rec) + ("system" in rec):
        return memoryview(data)[data.index(b'"conversations":') + 16:-1]
    return dumps(rec["conversations"])


_NOKEY = bytes(16)


class StructureOptions(NamedTuple):
    """What rules 1-4 and the output serialisation need, the same for every batch of one run."""

    stem: str  # default ids are ``{stem}-{index}``
    shape: str  # input shape: auto, llava or messages
    messages: bool  # write the messages shape
    json_array: bool  # OUT is a JSON array (else JSON Lines)
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  # rule 5, text_too_long


class StructReject(NamedTuple):
    """A record refused by rules 1-4: code, detail and the serialised original record."""

    code: str
    detail: str
    record: bytes


class Batch(NamedTuple):
    """Rules 1-4 over consecutive records, in columns (cheap to send between processes).

    ``ids[k]`` the output id; ``keys[16k:16k+16]`` the sample key; ``images[k]`` the image paths
    (``images`` None when no record of the batch has any); ``out[ends[k-1]:ends[k]]`` the framed output
    record (empty for a reject; ``out`` is `Held` in shared memory on its way from a worker, a view of
    it while decided); ``rejects`` maps k -> its `StructReject`.
    """

    ids: list[str]
    keys: bytes
    images: list[list[str]] | None
    out: bytes | memoryview | Held
    ends: list[int]
    rejects: dict[int, StructReject]


def frame(data: bytes, json_array: bool) -> bytes:
    """A serialised record as it goes into OUT: ``,\\n`` before it in a JSON array (the Sink drops
    the first one), a newline after it in JSON Lines."""
    return b",\n" + data if json_array else data + b"\n"


def structure_objects(objs: Iterable[Any], first: int, opts: StructureOptions,
                      slot: tuple[int, int] | None = None) -> Batch:
    """Rules 1-4 for parsed records ``first``, ``first + 1``, ...: everything the ordered decision needs.

    ``objs`` may be a generator that parses as it goes (each record is handled while its objects are
    still in the CPU cache: parsing all first and checking after is twice as slow). ``slot``: (area
    token, slot) of `mmdata.clean.handoff` to leave the output bytes in (``Batch.out`` is then `Held`)."""
    ids: list[str] = []
    keys: list[bytes] = []
    images: list[list[str]] = []
    datas: list[bytes] = []  # the serialised records written; framed by one join at the end
    ends: list[int] = []
    rejects: dict[int, StructReject] = {}
    size = 0
    any_images = False
    stem, shape, messages, json_array, max_chars = opts
    sep = b",\n" if json_array else b"\n"  # framing (see `frame`)
    add = datas.append
    for k, raw in enumerate(objs):
        code, detail, rid, rec, imgs, _roles, _values = normalize(raw, f"{stem}-{first + k}", shape, max_chars)
        ids.append(rid)
        images.append(imgs)
        if code is not None:
            rejects[k] = StructReject(code, detail, dump(raw))
            keys.append(_NOKEY)
        else:
            try:
                data = dumps(rec)
                conv = _conversations_json(rec, data)
                if messages:
                    data = dumps(to_messages(rec))
            except TypeError:  # what orjson refuses (see `dump`)
                conv = dump(rec["conversations"])
                data = dump(to_messages(rec) if messages else rec)
            add(data)
            size += len(data) + len(sep)
            keys.append(sample_key(imgs, conv, rec.get("system")))
            if imgs:
                any_images = True
        ends.append(size)
    parts = ((sep, sep.join(datas)) if json_array else (sep.join(datas), sep)) if datas else ()
    out = put(*slot, parts, size) if slot is not None else None
    return Batch(ids, b"".join(keys), images if any_images else None, out or b"".join(parts), ends, rejects)


def structure_span(path: str, span: Span, first: int, opts: StructureOptions,
                   slot: tuple[int, int] | None = None) -> Batch | int:
    """Read and parse the records of ``span`` (a worker task) and apply `structure_objects`. Returns
    the span position of the first record orjson refuses instead (the caller then re-reads the file
    with the exact reader): invalid JSON, NaN, huge integers, a white-space-only line."""
    pieces = read_pieces(path, span)
    if len(pieces) != span.n:
        return 0
    parsed = map(orjson.loads, pieces)
    try:
        return structure_objects(parsed, first, opts, slot)
    except orjson.JSONDecodeError:
        return 0  # the position is found again by the exact reader


class Decider:
    """Rules 5-11 in input order, and the writes: the first failing image (in ``<image>`` order) decides;
    then duplicate id and duplicate sample against what was already written to OUT."""

    def __init__(self, checker: ImageChecker, out: Sink, rejects: Sink, report: CleanReport, input_name: str,
                 serialise: Callable[[Any], bytes] = dump, rekey: bool = False):
        self.serialise = serialise  # original input record (as kept by the caller) -> JSON bytes
        self.rekey = rekey  # a repeated id becomes ``<id>-<n>`` instead of a duplicate_id reject
        self.rekeyed = 0
        self._repeats: dict[str, int] = {}
        self.checker = checker
        self.out = out
        self.rejects = rejects
        self.report = report
        self.input_name = input_name
        self.ids: set[str] = set()
        self.samples: dict[bytes, str] = {}  # sample key -> id of the record written with it

    def reject(self, index: int, rid: str, code: str, detail: str, record: bytes,
               extra: dict[str, Any] | None = None) -> None:
        """One rejects line; ``record`` is the original record, already serialised."""
        head: dict[str, Any] = {"index": index, "id": rid, "reason": code, "detail": detail, "input": self.input_name}
        if extra:
            head.update(extra)
        self.rejects.write(orjson.dumps(head)[:-1] + b',"record":' + record + b"}")
        self.report.rejected += 1
        self.report.by_reason[code] += 1

    def duplicate(self, rid: str, key: bytes) -> tuple[str, str]:
        """(code, detail) for a record whose id or sample key was already written."""
        if rid in self.ids and not (self.rekey and key in self.samples):
            return "duplicate_id", f"id {rid!r} was already written"
        return "duplicate_sample", f"same images and conversation as {self.samples[key]!r}"

    def decide(self, index: int, rid: str, images: list[str], key: bytes, out: bytes,
               original: Any, extra: dict[str, Any] | None = None) -> bool:
        """Write ``out`` or reject ``original`` (the input record, serialised by ``self.serialise`` only
        when needed); all image verdicts must be in. True when written."""
        if images:
            cache = self.checker.cache
            for p in images:
                v = cache[p]
                if v.code is not None:  # type: ignore[union-attr]
                    self.reject(index, rid, v.code, v.detail, self.serialise(original), extra)  # type: ignore[union-attr]
                    return False
        if key in self.samples or (rid in self.ids and not self.rekey):
            self.reject(index, rid, *self.duplicate(rid, key), self.serialise(original), extra)
            return False
        if rid in self.ids:
            rid, out = self.renamed(rid, out)
        self.ids.add(rid)
        self.samples[key] = rid
        self.out.write_block(out, 1)
        return True

    def renamed(self, rid: str, out: bytes) -> tuple[str, bytes]:
        """``--rekey``: the first free ``<id>-<n>`` (n = 1, 2, ... per repeated id) and the framed output
        record with it (the id is always the record's first key, so only its head changes)."""
        n = self._repeats.get(rid, 0)
        new = rid
        while new in self.ids:
            n += 1
            new = f"{rid}-{n}"
        self._repeats[rid] = n
        self.rekeyed += 1
        old_head, new_head = b'{"id":' + orjson.dumps(rid), b'{"id":' + orjson.dumps(new)
        out = bytes(out)
        at = out.index(old_head)  # after the framing (",\n" in a JSON array)
        return new, out[:at] + new_head + out[at + len(old_head):]


class Originals:
    """The original input record of a later-rejected record, found again on demand from its reference
    ``(src, k)``: parsed objects (``src`` a list) are at hand; raw bytes (``src`` a `Span` of the
    input file) are re-read from the file per span."""

    def __init__(self, path: Path | None):
        self.path = str(path)
        self._spans: dict[int, list[bytes]] = {}

    def serialise(self, ref: tuple[Any, int]) -> bytes:
        src, k = ref
        if type(src) is not Span:
            return dump(src[k])
        pieces = self._spans.get(src.offset)
        if pieces is None:
            if len(self._spans) > 64:
                self._spans.clear()
            pieces = self._spans[src.offset] = read_pieces(self.path, src)
        return dump(orjson.loads(pieces[k]))


class Item(NamedTuple):
    """One batch from a source: input position of its first record, where its records came from (a
    `Span`, or the list of parsed objects), and its `Batch` or the future of one (an int: see
    `structure_span`)."""

    first: int
    src: Any
    batch: Batch | int | Future


class Fallback(Exception):
    """A batch met input the fast path cannot vouch for (the source re-reads exactly)."""


class Waiting(NamedTuple):
    """A record that waits for image verdicts (or behind one that does): ``images`` None marks a
    structural reject keeping its place, with ``code``/``detail``/``out`` its code, detail, record."""

    index: int
    rid: str
    images: list[str] | None
    key: Any
    out: Any
    ref: Any


class Stream:
    """Decides batches in input order as their image verdicts arrive (see the module doc)."""

    def __init__(self, dec: Decider, originals: Originals, pool: ProcessPoolExecutor | None, nworkers: int,
                 slots: Slots | None = None):
        self.slots = slots  # where the workers leave batch outputs (`Held`), if anywhere
        self.dec = dec
        self.originals = originals
        self.checker = dec.checker
        self.waiting: deque[Waiting] = deque()
        self.pool = pool
        self.nworkers = nworkers
        self.n = 0

    def run(self, items: Iterator[Item], progress: Progress | None) -> int:
        """Consume every item (at most ``2 x workers`` futures ahead), settle, and return the record count."""
        tasks: deque[Item] = deque()
        for item in items:
            tasks.append(item)
            self.n = max(self.n, item.first + _count(item))
            while tasks and (len(tasks) > 2 * self.nworkers or not isinstance(tasks[0].batch, Future)):
                self._consume(tasks.popleft())
            if progress is not None:
                progress(self.n, self.checker.checked)
        while tasks:
            self._consume(tasks.popleft())
        self.checker.drain()
        self._settle(until=0)
        return self.n

    def _consume(self, item: Item) -> None:
        first, src, b = item
        if isinstance(b, Future):
            b = b.result()
        if type(b) is int:
            raise Fallback(f"record {first + b} is not plain JSON")
        held = b.out if type(b.out) is Held else None
        if held is not None:
            b = b._replace(out=self.slots.view(held))  # type: ignore[union-attr]
        if b.images is None and not self.waiting:
            self._decide_text_only(first, src, b)
        else:
            self._queue(first, src, b)
        if held is not None:  # OUT has taken the bytes: the slot may be lent again
            self.dec.out.flush()
            self.slots.release(held.index)  # type: ignore[union-attr]

    def _decide_text_only(self, first: int, src: Any, b: Batch) -> None:
        """No image to wait for: decide here. The usual batch (no reject, no repeat) is checked and
        recorded with set operations and written as one block; otherwise runs of passes are written as
        blocks (a reject has no bytes in ``out``; only a duplicate ends a run)."""
        dec = self.dec
        ids, samples, write_block = dec.ids, dec.samples, dec.out.write_block
        bids, bkeys, _, bout, bends, brej = b
        m = len(bids)
        if not brej:
            new_ids = set(bids)
            new_keys = dict(zip([bkeys[i:i + 16] for i in range(0, 16 * m, 16)], bids))
            if len(new_ids) == m and len(new_keys) == m and ids.isdisjoint(new_ids) \
                    and samples.keys().isdisjoint(new_keys):
                ids |= new_ids
                samples.update(new_keys)
                write_block(bout, m)
                return
        view = memoryview(bout)
        run_at, run_n = 0, 0
        for k, rid in enumerate(bids):
            if k in brej:
                dec.reject(first + k, rid, *brej[k])
                continue
            key = bkeys[16 * k:16 * k + 16]
            if rid not in ids and key not in samples:
                ids.add(rid)
                samples[key] = rid
                run_n += 1
                continue
            start = bends[k - 1] if k else 0
            if run_n:
                write_block(view[run_at:start], run_n)
            dec.decide(first + k, rid, (), key, view[start:bends[k]], (src, k))
            run_at, run_n = bends[k], 0
        if run_n:
            write_block(view[run_at:], run_n)

    def _queue(self, first: int, src: Any, b: Batch) -> None:
        """Request each record's images; decide those whose verdicts are in, queue the rest in order."""
        dec, waiting, cache, request = self.dec, self.waiting, self.checker.cache, self.checker.request
        bids, bkeys, bimages, bout, bends, brej = b
        if type(bout) is memoryview:
            bout = bytes(bout)  # waiting records outlive the shared slot
        for k, rid in enumerate(bids):
            index = first + k
            if k in brej:
                code, detail, orig = brej[k]
                if waiting:
                    waiting.append(Waiting(index, rid, None, code, detail, orig))
                else:
                    dec.reject(index, rid, code, detail, orig)
                continue
            imgs = bimages[k] if bimages is not None else ()
            key = bkeys[16 * k:16 * k + 16]
            payload = bout[bends[k - 1] if k else 0:bends[k]]
            ref = (src, k)
            if imgs:
                for p in imgs:
                    request(p)
                if waiting or any(cache[p] is None for p in imgs):
                    waiting.append(Waiting(index, rid, imgs, key, payload, ref))
                    continue
            elif waiting:
                waiting.append(Waiting(index, rid, imgs, key, payload, ref))
                continue
            dec.decide(index, rid, imgs, key, payload, ref)
        if waiting:
            self._settle(until=_WINDOW // 2 if len(waiting) >= _WINDOW else None)

    def _settle(self, until: int | None) -> None:
        """Decide queued records from the head while their verdicts are in. With ``until`` set, block on
        the checker until fewer than ``until`` records wait (0: all)."""
        waiting, cache, dec, checker = self.waiting, self.checker.cache, self.dec, self.checker
        while waiting:
            head = waiting[0]
            if head.images is None:
                waiting.popleft()
                dec.reject(head.index, head.rid, head.key, head.out, head.ref)
                continue
            for p in head.images:
                if cache[p] is None:
                    break
            else:
                waiting.popleft()
                dec.decide(*head)
                continue
            if until is None or len(waiting) < until:
                return
            checker.flush()
            checker.wait_some()


def _count(item: Item) -> int:
    src = item.src
    return src.n if type(src) is Span else len(src)
