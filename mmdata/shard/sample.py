"""One conversation record -> one shard sample (json + stored images), or a reject reason.

Every record first goes through ``mmdata.records.normalize`` (clean's rules 1-4: LLaVA or messages
shape in, the canonical CONTRACT s.1 record out), so a stored json always passes ``validate_record``.

Runs inside the worker processes: everything here depends only on the record and the options,
so the result (and hence the shard bytes) is the same whichever worker computes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mmdata.format.sample import ImageMeta, ShardSample
from mmdata.images import ImageError
from mmdata.records import normalize, unsafe_path_reason, validate_record
from mmdata.rules import Rule
from mmdata.shard.resize import ResizeSpec, resize_image

__all__ = ["Task", "Sample", "Reject", "SampleMaker", "record_id"]

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Task:
    """A record and where it came from: input file number, its stem, record index and line."""

    file_idx: int
    stem: str
    index: int
    line: int
    record: Any


@dataclass
class Sample:
    """A sample ready for the tar, minus its key (keys are given in order by the writer)."""

    json: bytes
    images: list[bytes]
    id: str
    image_tokens: list[int]
    widths: list[int]
    heights: list[int]
    passthrough: int
    text_chars: int
    n_turns: int
    source: str
    text_tokens: int | None = None
    ids: bytes | None = None  # ``{key}.ids.npy`` when sharding with a tokenizer (see writer.ids_member)
    record: dict | None = field(default=None, repr=False)  # the clean record; dropped before leaving the worker


@dataclass
class Reject:
    """Why a record did not become a sample (a reason code from CONTRACT s.2/s.3)."""

    reason: str
    detail: str
    id: str | None


def record_id(rec: Any, stem: str, index: int) -> str | None:
    """The id a reject is filed under: a string id as is, an integer as its string, none or blank ->
    ``<stem>-<index>``, unreadable -> None (stored samples take ``normalize``'s id, the same)."""
    if not isinstance(rec, dict):
        return None
    rid = rec.get("id")
    if rid is None or (isinstance(rid, str) and not rid.strip()):  # blank counts as missing, as in clean
        return f"{stem}-{index}"
    if isinstance(rid, bool):
        return None
    if isinstance(rid, (str, int)):
        return str(rid)
    return None


class SampleMaker:
    """Turns tasks into samples under fixed options; one instance per worker process."""

    def __init__(self, images_root: str | os.PathLike, spec: ResizeSpec, rule: Rule | None = None):
        self.root = os.path.realpath(images_root)
        self.root_prefix = self.root.rstrip(os.sep) + os.sep
        self.spec = spec
        self.rule = rule or spec.get_rule()

    def _resolve(self, p: str) -> str | None:
        if unsafe_path_reason(p) is not None or os.path.isabs(p):
            return None
        real = os.path.realpath(os.path.join(self.root, p))
        return real if real.startswith(self.root_prefix) else None

    def make(self, task: Task) -> Sample | Reject:
        rec = task.record
        sid = record_id(rec, task.stem, task.index)
        norm = normalize(rec, f"{task.stem}-{task.index}")
        if norm.code is not None:
            return Reject(norm.code, norm.detail, sid)
        clean = norm.record
        assert clean is not None
        if clean == rec:
            clean = rec  # already clean: keep its key order, so its json is stored byte-identically
        problems = validate_record(clean)
        if problems:  # what normalize accepts but CONTRACT s.1 does not (e.g. an empty id)
            code, detail = problems[0]
            return Reject(code, detail, sid)
        sid = clean["id"]
        stored = []
        for p in norm.images:
            real = self._resolve(p)
            if real is None:
                return Reject("unsafe_path", f"{p!r} is absolute, has '..' or leaves the image root", sid)
            try:
                with open(real, "rb") as f:
                    data = f.read()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return Reject("missing_image", f"no such file: {p}", sid)
            except OSError as e:
                return Reject("unreadable_image", f"{p}: cannot read: {e.strerror or e}", sid)
            try:
                stored.append(resize_image(data, self.spec, self.rule))
            except ImageError as e:
                return Reject(e.reason, f"{p}: {e.detail}", sid)
        tokens = [s.image_tokens for s in stored]
        metas = [ImageMeta(s.width, s.height, s.image_tokens, s.orig_width, s.orig_height, s.passthrough)
                 for s in stored]
        conv = clean["conversations"]
        source = clean.get("source")
        return Sample(
            json=ShardSample(clean, metas).to_json(),
            images=[s.data for s in stored],
            id=sid,
            image_tokens=tokens,
            widths=[s.width for s in stored],
            heights=[s.height for s in stored],
            passthrough=sum(s.passthrough for s in stored),
            text_chars=sum(len(t["value"].replace(IMAGE_TOKEN, "")) for t in conv),
            n_turns=len(conv),
            source=source if isinstance(source, str) else task.stem,
            record=clean,
        )
