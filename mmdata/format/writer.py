"""``ShardWriter``: the shard folder's writing side. Owns the tar layout of a sample, shard rollover,
hashing, the resume journal, the index and the manifest, so ``mmdata.shard`` only decides what the
samples are. Deterministic: same samples in the same order -> same bytes.

A run writes into ``OUTDIR/.mmdata-staging/``: each shard as ``.shard-NNNNNN.tar.tmp``, renamed when
complete, then a journal line, so a killed run resumes from its last complete shard with identical
bytes. The previous output in OUTDIR stays as it was until the new run is complete; ``finish`` then
moves the new files into place (the manifest last: a folder with a manifest is a finished run) and
removes the staging folder. ``abort`` after a user error (bad input, full disk) removes it too; after
any other failure (an interrupt, a crash) it keeps the journal and complete shards for ``--resume``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson
import pyarrow as pa

from mmdata import storage
from mmdata.format import names, tar
from mmdata.format.index import IndexColumns, to_table, write_index
from mmdata.format.journal import Journal, read_journal
from mmdata.format.manifest import ShardInfo, build_manifest, write_manifest
from mmdata.storage.local import fsync_dir

__all__ = ["ShardWriter", "WritableSample", "sample_members"]


class WritableSample(Protocol):
    """What the writer needs of a sample (``mmdata.shard.sample.Sample`` has it)."""

    json: bytes
    ids: bytes | None
    images: list[bytes]
    id: str
    image_tokens: list[int]
    widths: list[int]
    heights: list[int]
    text_chars: int
    n_turns: int
    source: str
    text_tokens: int | None
    passthrough: int


def sample_members(key: str, s: WritableSample) -> list[tuple[str, bytes]]:
    """The tar layout of one sample: ``key.json``, then ``key.ids.npy`` (pre-tokenised), then the
    images as ``key.jpg`` (one) or ``key.0.jpg``, ``key.1.jpg``, ... (several)."""
    members = [(f"{key}.json", s.json)]
    if s.ids is not None:
        members.append((f"{key}.ids.npy", s.ids))
    if len(s.images) == 1:
        members.append((f"{key}.jpg", s.images[0]))
    else:
        members += [(f"{key}.{i}.jpg", d) for i, d in enumerate(s.images)]
    return members


class _OpenShard:
    """A shard being written under its temporary name, hashed as it goes."""

    def __init__(self, out_dir: Path, idx: int, first_key: str):
        self.idx = idx
        self.name = names.shard_name(idx)
        self.final = out_dir / self.name
        self.tmp = out_dir / names.tmp_name(self.name)
        self.f: BinaryIO = open(self.tmp, "wb")
        self.sha = hashlib.sha256()
        self.size = self.samples = self.passthrough = 0
        self.first_key = self.last_key = first_key

    def add(self, key: str, data: bytes) -> int:
        offset = self.size
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)
        self.samples += 1
        self.last_key = key
        return offset

    def close(self) -> ShardInfo:
        end = tar.end_of_archive(self.size)
        self.f.write(end)
        self.sha.update(end)
        self.size += len(end)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return ShardInfo(self.name, self.samples, self.size, self.sha.hexdigest(), self.first_key, self.last_key)

    def discard(self) -> None:
        try:
            self.f.close()
        except OSError:
            pass
        storage.remove(self.tmp)


@dataclass
class _Totals:
    """Running counts over the whole run (resumed shards included)."""

    images: int = 0
    image_tokens: int = 0
    passthrough: int = 0
    reasons: Counter = field(default_factory=Counter)


class ShardWriter:
    """Writes samples and rejects into ``out_dir`` in order; ``finish`` writes index, rejects, manifest.

    ``header`` = {"options", "input_bytes", "input_sha256"}: recorded in the journal (and the
    manifest), compared on resume by ``check_header``.
    """

    def __init__(self, out_dir: Path, header: dict[str, Any], *, samples_per_shard: int | None,
                 max_shard_bytes: int, with_text_tokens: bool):
        self.out_dir = Path(out_dir)
        self.stage = self.out_dir / names.STAGING
        self.header = header
        self.samples_per_shard = samples_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.with_text_tokens = with_text_tokens
        self.shards: list[ShardInfo] = []
        self.tables: list[pa.Table] = []
        self.cols = IndexColumns(with_text_tokens)
        self.rejects: list[dict[str, Any]] = []
        self.totals = _Totals()
        self.n = 0  # next sample number = next key
        self.position: tuple[int, int] = (0, 0)  # (input file, record index) after the last written sample
        self.resumed = 0
        self._journaled_rejects = 0
        self._shard: _OpenShard | None = None
        self._journal: Journal | None = None

    # ---- start ----------------------------------------------------------------------------------
    def start(self, resume: bool, check_header) -> tuple[int, int]:
        """Keep the verified shards of a killed run (``resume``), clear everything else this writer
        owns, open the journal; returns the input position to continue from."""
        path = self.stage / names.JOURNAL
        entries = read_journal(self.stage, path, check_header) if resume else []
        storage.makedirs(self.stage)
        self._clear(keep=len(entries))
        for e in entries:
            self.shards.append(ShardInfo(**e["shard"]))
            self.tables.append(to_table(e["rows"]))
            self.totals.images += sum(e["rows"]["n_images"])
            self.totals.image_tokens += sum(e["rows"]["image_tokens"])
            self.totals.passthrough += e.get("passthrough", 0)
            self.rejects.extend(e["rejects"])
            self.position = tuple(e["next"])  # type: ignore[assignment]
        for r in self.rejects:
            self.totals.reasons[r["reason"]] += 1
        self.resumed = len(entries)
        self.n = sum(t.num_rows for t in self.tables)
        self._journaled_rejects = len(self.rejects)
        # Rewritten as exactly the verified prefix (drops a torn or unverified tail).
        self._journal = Journal(path, self.header, entries)
        return self.position

    def _clear(self, keep: int) -> None:
        """Empty the staging folder but for the ``keep`` verified shards (and the journal)."""
        for n in storage.listdir(self.stage):
            num = names.shard_number(n)
            if n != names.JOURNAL and (num is None or num >= keep):
                p = self.stage / n
                shutil.rmtree(p) if storage.isdir(p) else storage.remove(p)

    # ---- samples --------------------------------------------------------------------------------
    def reject(self, reject: dict[str, Any]) -> None:
        """A record that did not become a sample (``_file`` and ``index`` say where it came from)."""
        self.totals.reasons[reject["reason"]] += 1
        self.rejects.append(reject)

    def add(self, s: WritableSample, position: tuple[int, int]) -> str:
        """Append one sample (its key is the next number); ``position`` is the input position after it."""
        key = f"{self.n:09d}"
        data = tar.sample_bytes(sample_members(key, s))
        # The limit holds for the finished file: end-of-archive blocks and record padding count.
        # A sample too big for any shard still gets one of its own.
        if self._shard is not None and tar.archive_size(self._shard.size + len(data)) > self.max_shard_bytes:
            self._close_shard()
        if self._shard is None:
            self._shard = _OpenShard(self.stage, len(self.shards), key)
        sh = self._shard
        offset = sh.add(key, data)
        self._add_row(s, key, sh, offset, len(data))
        self.n += 1
        self.totals.images += len(s.images)
        self.totals.image_tokens += sum(s.image_tokens)
        self.totals.passthrough += s.passthrough
        sh.passthrough += s.passthrough
        self.position = position
        if self.samples_per_shard is not None and sh.samples >= self.samples_per_shard:
            self._close_shard()
        return key

    def _add_row(self, s: WritableSample, key: str, sh: _OpenShard, offset: int, nbytes: int) -> None:
        c = self.cols
        for col, v in (("key", key), ("shard", sh.name), ("shard_idx", sh.idx), ("offset", offset),
                       ("nbytes", nbytes), ("id", s.id), ("n_images", len(s.images)),
                       ("image_tokens", sum(s.image_tokens)), ("image_tokens_list", s.image_tokens),
                       ("widths", s.widths), ("heights", s.heights), ("text_chars", s.text_chars),
                       ("n_turns", s.n_turns), ("source", s.source)):
            c[col].append(v)
        if self.with_text_tokens:
            c["text_tokens"].append(s.text_tokens)

    def _close_shard(self) -> None:
        sh = self._shard
        assert sh is not None and self._journal is not None
        info = sh.close()
        self.shards.append(info)
        new = [r for r in self.rejects[self._journaled_rejects:] if (r["_file"], r["index"]) < self.position]
        self._journaled_rejects += len(new)
        self._journal.append({"shard": info.__dict__, "next": list(self.position), "rows": dict(self.cols),
                              "rejects": new, "passthrough": sh.passthrough})
        self.tables.append(to_table(self.cols))
        self.cols = IndexColumns(self.with_text_tokens)
        self._shard = None

    # ---- end ------------------------------------------------------------------------------------
    def close_inputs(self) -> None:
        """All records are in: close the open shard."""
        if self._shard is not None:
            self._close_shard()

    def abort(self, keep_for_resume: bool) -> None:
        """A failed run: drop the open shard's temp file; keep the journal and complete shards for
        ``--resume`` (``keep_for_resume``) or remove the whole staging folder. OUTDIR is untouched."""
        if self._shard is not None:
            self._shard.discard()
            self._shard = None
        if self._journal is not None:
            self._journal.close()
        if not keep_for_resume:
            self.discard_stage()

    def discard_stage(self) -> None:
        """Remove the staging folder and everything in it (it is this writer's own)."""
        shutil.rmtree(self.stage, ignore_errors=True)

    def finish(self) -> dict[str, Any]:
        """Write index, rejects and manifest beside the new shards, then move the whole new output into
        OUTDIR in place of the old one and remove the staging folder. Returns the manifest."""
        assert self._journal is not None
        self._journal.close()
        write_index(self.stage / names.INDEX, self.tables, with_text_tokens=self.with_text_tokens)
        with storage.atomic_output(self.stage / names.REJECTS) as f:
            for r in self.rejects:
                f.write(orjson.dumps({k: v for k, v in r.items() if k != "_file"}) + b"\n")
        t = self.totals
        manifest = build_manifest(self.header["options"], self.shards, self.n, len(self.rejects), t.image_tokens,
                                  dict(sorted(t.reasons.items())), t.passthrough, t.images,
                                  input_sha256=self.header["input_sha256"])
        write_manifest(self.stage / names.MANIFEST, manifest)
        self._swap()
        return manifest

    def _swap(self) -> None:
        """Replace OUTDIR's previous output by the staged one. The old manifest goes first and the new
        one comes last, so an interrupted swap never looks like a finished run (rerun to redo it)."""
        out, st = self.out_dir, self.stage
        storage.remove(out / names.MANIFEST)
        fsync_dir(out)
        for info in self.shards:
            os.replace(st / info.name, out / info.name)
        for n in storage.listdir(out):  # the old run's extra shards and temp files
            num = names.shard_number(n)
            if (num is not None and num >= len(self.shards)) or names.TMP_RE.match(n) or n == names.JOURNAL:
                storage.remove(out / n)
        for n in (names.INDEX, names.REJECTS):
            os.replace(st / n, out / n)
        fsync_dir(out)
        os.replace(st / names.MANIFEST, out / names.MANIFEST)
        # The manifest (options, input sha256, shards) now records the finished run; --resume on this
        # folder checks it instead, so the journal is not needed any more.
        assert self._journal is not None
        self._journal.remove()
        self.discard_stage()
        fsync_dir(out)
