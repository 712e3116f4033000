"""One conversation record -> one shard sample (json + stored images), or a reject reason.

Runs inside the worker processes: everything here depends only on the record and the options,
so the result (and hence the shard bytes) is the same whichever worker computes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from mmdata.images import ImageError
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
    record: dict | None = field(default=None, repr=False)  # kept only when text tokens are counted


@dataclass
class Reject:
    """Why a record did not become a sample (a reason code from CONTRACT s.2/s.3)."""

    reason: str
    detail: str
    id: str | None


def record_id(rec: Any, stem: str, index: int) -> str | None:
    """The sample id: a string id as is, an integer as its string, none -> ``<stem>-<index>``."""
    if not isinstance(rec, dict):
        return None
    rid = rec.get("id")
    if rid is None:
        return f"{stem}-{index}"
    if isinstance(rid, bool):
        return None
    if isinstance(rid, (str, int)):
        return str(rid)
    return None


def _check(rec: Any) -> tuple[list[str], list[dict]] | str:
    """(image paths, turns) of a well-formed record, or a 'malformed' detail."""
    if not isinstance(rec, dict):
        return "record is not a JSON object"
    rid = rec.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        return "id is not a string or integer"
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        if "messages" in rec:
            return "a messages-shape record: shard reads the LLaVA shape (mmdata clean --out-format llava)"
        return "conversations missing, not a list or empty"
    for i, t in enumerate(conv):
        if not isinstance(t, dict) or not isinstance(t.get("from"), str) or not isinstance(t.get("value"), str):
            return f"turn {i} is not an object with string 'from' and 'value'"
    img = rec.get("image")
    if img is None:
        paths: list[str] = []
    elif isinstance(img, str):
        paths = [img]
    elif isinstance(img, list) and all(isinstance(p, str) for p in img):
        paths = img
    else:
        return "image is not a string or a list of strings"
    n_tok = sum(t["value"].count(IMAGE_TOKEN) for t in conv)
    if n_tok != len(paths):
        return f"{n_tok} <image> token(s) for {len(paths)} image(s)"
    return paths, conv


class SampleMaker:
    """Turns tasks into samples under fixed options; one instance per worker process."""

    def __init__(self, images_root: str | os.PathLike, spec: ResizeSpec, rule: Rule | None = None):
        self.root = os.path.realpath(images_root)
        self.root_prefix = self.root.rstrip(os.sep) + os.sep
        self.spec = spec
        self.rule = rule or spec.get_rule()

    def _resolve(self, p: str) -> str | None:
        if not p or os.path.isabs(p) or ".." in p.replace("\\", "/").split("/"):
            return None
        real = os.path.realpath(os.path.join(self.root, p))
        return real if real.startswith(self.root_prefix) else None

    def make(self, task: Task) -> Sample | Reject:
        rec = task.record
        sid = record_id(rec, task.stem, task.index)
        checked = _check(rec)
        if isinstance(checked, str):
            return Reject("malformed", checked, sid)
        paths, conv = checked
        stored = []
        for p in paths:
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
        out = dict(rec)
        if out.get("id") != sid:
            if "id" in out:
                out["id"] = sid
            else:
                out = {"id": sid, **out}
        tokens = [s.image_tokens for s in stored]
        out["images"] = [s.meta() for s in stored]
        out["image_tokens"] = sum(tokens)
        source = rec.get("source")
        return Sample(
            json=orjson.dumps(out),
            images=[s.data for s in stored],
            id=sid,
            image_tokens=tokens,
            widths=[s.width for s in stored],
            heights=[s.height for s in stored],
            passthrough=sum(s.passthrough for s in stored),
            text_chars=sum(len(t["value"].replace(IMAGE_TOKEN, "")) for t in conv),
            n_turns=len(conv),
            source=source if isinstance(source, str) else task.stem,
        )
