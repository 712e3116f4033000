"""`clean coco`: a COCO captions file (``images`` + ``annotations``) -> conversation records.

One record per image listing (``--per-caption``: one per valid caption): the human turn is
``<image>\\n`` + a short-description prompt chosen by the file stem, the gpt turn the caption with the
lowest annotation id, all valid captions kept under ``captions``, width/height from the decoded image.
Structure first (malformed, no_caption), then every distinct image once, then the decision in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from mmdata.clean.checks import ImageChecker, Verdict
from mmdata.clean.engine import Decider, Progress, check_common_args, frame, sample_key
from mmdata.clean.remote import as_path, staged_input, one_writer
from mmdata.clean.prompts import DEFAULT_PROMPTS, prompt_for
from mmdata.clean.report import CleanReport, Sink, default_paths, dump
from mmdata.errors import InputError
from mmdata.images import DEFAULT_MAX_PIXELS
from mmdata.io import read_json
from mmdata.procs import resolve_workers
from mmdata.records import json_type, to_messages

__all__ = ["clean_coco"]

Captions = list[tuple[int, str]]  # (annotation id, stripped caption), by annotation id


class AnnReject(NamedTuple):
    """An annotation rejected on its own (malformed, orphan_annotation)."""

    index: int
    id: str
    code: str
    detail: str
    annotation: Any


class Listing(NamedTuple):
    """An image listing after the structure checks: ``code`` None when it goes on to the image and
    duplicate decision with ``file_name`` and its ``captions``."""

    index: int
    id: str
    code: str | None
    detail: str
    listing: Any
    file_name: str | None = None
    captions: Captions | None = None


def _is_key(x: Any) -> bool:
    return (type(x) is int) or (type(x) is str)


def _read_coco(path: Path) -> tuple[list[Any], list[Any]]:
    """The ``images`` and ``annotations`` lists of a COCO captions file, or InputError."""
    data = read_json(path)
    if type(data) is not dict:
        raise InputError(path, f"not a COCO captions file: top level is {json_type(data)}, expected an object")
    images, anns = data.get("images"), data.get("annotations")
    if type(images) is not list or type(anns) is not list:
        missing = "images" if type(images) is not list else "annotations"
        raise InputError(path, f"not a COCO captions file: no '{missing}' list")
    if anns and not any(type(a) is dict and "caption" in a for a in anns):
        raise InputError(path, f"{_file_kind(data, anns)}, not a COCO captions file: no annotation has a 'caption'; "
                               "pass annotations/captions_*.json to `clean coco`")
    return images, anns


def _file_kind(data: dict[str, Any], anns: list[Any]) -> str:
    """What a COCO file without captions is, from its annotation keys (for the error message)."""
    keys = set().union(*(a.keys() for a in anns[:100] if type(a) is dict))
    if "keypoints" in keys:
        return "a COCO person keypoints file"
    if "segments_info" in keys:
        return "a COCO panoptic file"
    if "bbox" in keys or "segmentation" in keys or "categories" in data:
        return "a COCO instances (object detection) file"
    return "a COCO file of another kind"


def _annotation_problem(a: Any) -> str | None:
    """Why an annotation object cannot be used (after its id was found valid), or None."""
    img = a.get("image_id")
    if not _is_key(img):
        return "has no image_id" if "image_id" not in a else f"image_id is {json_type(img)}, expected an integer"
    cap = a.get("caption")
    if type(cap) is not str:
        return "has no caption" if "caption" not in a else f"caption is {json_type(cap)}, expected a string"
    return None


def _group_captions(anns: list[Any], listed: set[Any]) -> tuple[dict[Any, Captions], list[AnnReject]]:
    """Valid, non-blank captions per image id, sorted by annotation id; and annotation rejects."""
    by_img: dict[Any, Captions] = {}
    rejects: list[AnnReject] = []
    for j, a in enumerate(anns):
        if type(a) is not dict:
            rejects.append(AnnReject(j, f"annotation-{j}", "malformed", f"annotation is {json_type(a)}, expected an object", a))
            continue
        aid = a.get("id")
        rid = str(aid) if _is_key(aid) else f"annotation-{j}"
        if type(aid) is not int:
            why = "has no id" if "id" not in a else f"id is {json_type(aid)}, expected an integer"
            rejects.append(AnnReject(j, rid, "malformed", f"annotation {why}", a))
            continue
        why = _annotation_problem(a)
        if why is not None:
            rejects.append(AnnReject(j, rid, "malformed", f"annotation {why}", a))
            continue
        img = a["image_id"]
        if img not in listed:
            rejects.append(AnnReject(j, rid, "orphan_annotation", f"image_id {img} is not listed in 'images'", a))
            continue
        cap = a["caption"].strip()
        if cap:
            by_img.setdefault(img, []).append((aid, cap))
    for caps in by_img.values():
        caps.sort()
    return by_img, rejects


def _plan_listing(i: int, L: Any, by_img: dict[Any, Captions], fallback: str, first_at: dict[Any, int]) -> Listing:
    """Structure checks of one image listing (malformed, duplicate_id of a listed image id, no_caption).

    ``first_at`` maps each image id to the position of its first listing: captions name an image id,
    so a second listing with that id cannot tell its captions from the first's and is rejected."""
    if type(L) is not dict:
        return Listing(i, f"{fallback}-{i}", "malformed", f"image listing is {json_type(L)}, expected an object", L)
    fn = L.get("file_name")
    if type(fn) is not str:
        why = "has no file_name" if "file_name" not in L else f"file_name is {json_type(fn)}, expected a string"
        return Listing(i, f"{fallback}-{i}", "malformed", f"image listing {why}", L)
    stem = Path(fn).stem
    img_id = L.get("id")
    if not _is_key(img_id):
        why = "has no id" if "id" not in L else f"id is {json_type(img_id)}, expected an integer"
        return Listing(i, stem, "malformed", f"image listing {why}", L)
    j = first_at.setdefault(img_id, i)
    if j != i:
        return Listing(i, stem, "duplicate_id", f"image id {img_id} is already listed at images[{j}] "
                       "(captions name an image id, so they belong to the first listing)", L)
    caps = by_img.get(img_id)
    if not caps:
        return Listing(i, stem, "no_caption", f"no non-blank caption for image id {img_id}", L)
    return Listing(i, stem, None, "", L, fn, caps)


class _Writer:
    """Builds the records of one accepted listing and passes them to the decider."""

    def __init__(self, dec: Decider, checker: ImageChecker, prompts: tuple[str, ...], per_caption: bool,
                 messages: bool, json_array: bool):
        self.dec, self.checker, self.prompts = dec, checker, prompts
        self.per_caption, self.messages, self.json_array = per_caption, messages, json_array
        self.stems: set[str] = set()

    def units(self, p: Listing) -> int:
        """Report units of a listing: one per caption record it can produce, else one (see clean-rules)."""
        if self.per_caption and p.code is None and self.checker.cache[p.file_name].code is None \
                and p.id not in self.stems:
            return len(p.captions)
        return 1

    def listing(self, p: Listing) -> None:
        """Reject the listing, or write its record(s)."""
        kind = {"kind": "image"}
        dec, stem = self.dec, p.id
        if p.code is not None:
            dec.reject(p.index, stem, p.code, p.detail, dump(p.listing), kind)
            return
        v: Verdict = self.checker.cache[p.file_name]
        if v.code is not None:
            dec.reject(p.index, stem, v.code, v.detail, dump(p.listing), kind)
            return
        if stem in self.stems:
            dec.reject(p.index, stem, "duplicate_id", f"id {stem!r} (the file stem) was already written",
                       dump(p.listing), kind)
            return
        human = {"from": "human", "value": prompt_for(stem, self.prompts)}
        if not self.per_caption:
            cap = p.captions[0][1]
            rec = {"id": stem, "image": p.file_name, "conversations": [human, {"from": "gpt", "value": cap}],
                   "captions": [c for _, c in p.captions], "width": v.width, "height": v.height}
            if self._write(p, stem, rec, kind):
                self.stems.add(stem)
            return
        wrote = False
        for aid, cap in p.captions:
            cid = f"{stem}_{aid}"
            rec = {"id": cid, "image": p.file_name, "conversations": [human, {"from": "gpt", "value": cap}],
                   "annotation_id": aid, "width": v.width, "height": v.height}
            wrote |= self._write(p, cid, rec, {"kind": "image", "annotation_id": aid})
        if wrote:
            self.stems.add(stem)

    def _write(self, p: Listing, rid: str, rec: dict[str, Any], extra: dict[str, Any]) -> bool:
        key = sample_key([rec["image"]], dump(rec["conversations"]))
        data = frame(dump(to_messages(rec) if self.messages else rec), self.json_array)
        return self.dec.decide(p.index, rid, [rec["image"]], key, data, p.listing, extra)


@one_writer  # an s3:// OUT: one run at a time
def clean_coco(
    captions_path: str | Path,
    images_root: str | Path,
    out_path: str | Path,
    *,
    rejects_path: str | Path | None = None,
    report_path: str | Path | None = None,
    per_caption: bool = False,
    prompts: tuple[str, ...] | list[str] | None = None,
    min_side: int = 28,
    max_aspect: float = 200,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    out_format: str = "llava",
    progress: Progress | None = None,
) -> CleanReport:
    """Clean a COCO captions file into OUT + rejects + report (see the module doc for the record)."""
    captions_path, images_root, out_path = as_path(captions_path), as_path(images_root), as_path(out_path)
    rejects_path, report_path = default_paths(out_path, as_path(rejects_path) if rejects_path else None,
                                              as_path(report_path) if report_path else None)
    fmt = check_common_args(images_root, out_path, [captions_path], min_side, max_aspect, max_pixels, out_format,
                            (rejects_path, report_path))
    prompts = tuple(prompts) if prompts else DEFAULT_PROMPTS
    with staged_input(captions_path) as local_captions:  # an s3:// file: a local copy under the same name
        images, anns = _read_coco(local_captions)
    listed = {L["id"] for L in images if type(L) is dict and _is_key(L.get("id"))}
    by_img, ann_rejects = _group_captions(anns, listed)
    first_at: dict[Any, int] = {}
    plan = [_plan_listing(i, L, by_img, captions_path.stem, first_at) for i, L in enumerate(images)]
    report = CleanReport(kind="coco", source=captions_path.name, out=str(out_path), rejects=str(rejects_path),
                         report=str(report_path),
                         options={"min_side": min_side, "max_aspect": max_aspect, "max_pixels": max_pixels,
                                  "out_format": out_format, "per_caption": per_caption, "prompts": len(prompts)})
    with ImageChecker(str(images_root), workers=resolve_workers(workers), min_side=min_side, max_aspect=max_aspect,
                      max_pixels=max_pixels, on_done=(lambda n: progress(0, n)) if progress else None) as checker, \
            Sink(rejects_path, "jsonl") as rejects, Sink(out_path, fmt) as out:
        for p in plan:
            if p.code is None:
                checker.request(p.file_name)
        checker.drain()
        dec = Decider(checker, out, rejects, report, captions_path.name)
        writer = _Writer(dec, checker, prompts, per_caption, out_format == "messages", fmt == "json")
        # Units (report ``input``): each ends in OUT or the rejects file, so written + rejected == input.
        units = len(ann_rejects)
        for p in plan:
            units += writer.units(p)
            writer.listing(p)
        for a in ann_rejects:
            dec.reject(a.index, a.id, a.code, a.detail, dump(a.annotation), {"kind": "annotation"})
        report.input = units
        report.written = out.count
        report.images_checked = checker.checked
        report.extra = {"listings": len(images), "annotations": len(anns), "annotations_rejected": len(ann_rejects),
                        "captions_used": sum(len(c) for c in by_img.values())}
    report.write(report_path)
    return report
