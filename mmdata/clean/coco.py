"""`clean coco`: a COCO captions file (``images`` + ``annotations``) -> conversation records.

One record per image listing (``--per-caption``: one per valid caption): the human turn is
``<image>\\n`` + a short-description prompt chosen by the file stem, the gpt turn the caption with the
lowest annotation id, all valid captions kept under ``captions``, width/height from the decoded image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmdata.clean.checks import ImageChecker
from mmdata.clean.llava import (
    Decider,
    check_common_args,
    frame,
    resolve_workers,
    sample_key,
)
from mmdata.clean.prompts import DEFAULT_PROMPTS, prompt_for
from mmdata.clean.report import CleanReport, Sink, default_paths, dump
from mmdata.errors import InputError
from mmdata.images import DEFAULT_MAX_PIXELS
from mmdata.io import read_json
from mmdata.records import to_messages

__all__ = ["clean_coco"]


def _type(x: Any) -> str:
    return "null" if x is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "array", dict: "object"}.get(type(x), type(x).__name__)


def _is_key(x: Any) -> bool:
    return (type(x) is int) or (type(x) is str)


def _group_captions(anns: list[Any], listed: set[Any]) -> tuple[dict[Any, list[tuple[int, str]]], list[tuple]]:
    """Valid, non-blank captions per image id, sorted by annotation id; and annotation rejects."""
    by_img: dict[Any, list[tuple[int, str]]] = {}
    rejects: list[tuple] = []  # (index, id, code, detail, annotation)
    for j, a in enumerate(anns):
        if type(a) is not dict:
            rejects.append((j, f"annotation-{j}", "malformed", f"annotation is {_type(a)}, expected an object", a))
            continue
        aid = a.get("id")
        rid = str(aid) if _is_key(aid) else f"annotation-{j}"
        if type(aid) is not int:
            why = "has no id" if "id" not in a else f"id is {_type(aid)}, expected an integer"
            rejects.append((j, rid, "malformed", f"annotation {why}", a))
            continue
        img = a.get("image_id")
        if not _is_key(img):
            why = "has no image_id" if "image_id" not in a else f"image_id is {_type(img)}, expected an integer"
            rejects.append((j, rid, "malformed", f"annotation {why}", a))
            continue
        cap = a.get("caption")
        if type(cap) is not str:
            why = "has no caption" if "caption" not in a else f"caption is {_type(cap)}, expected a string"
            rejects.append((j, rid, "malformed", f"annotation {why}", a))
            continue
        if img not in listed:
            rejects.append((j, rid, "orphan_annotation", f"image_id {img} is not listed in 'images'", a))
            continue
        cap = cap.strip()
        if cap:
            by_img.setdefault(img, []).append((aid, cap))
    for caps in by_img.values():
        caps.sort()
    return by_img, rejects


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
    progress: Callable[[int, int], None] | None = None,
) -> CleanReport:
    """Clean a COCO captions file into OUT + rejects + report (see the module doc for the record)."""
    captions_path, images_root, out_path = Path(captions_path), Path(images_root), Path(out_path)
    rejects_path, report_path = default_paths(out_path, Path(rejects_path) if rejects_path else None,
                                              Path(report_path) if report_path else None)
    fmt = check_common_args(images_root, out_path, [captions_path], min_side, max_aspect, max_pixels, out_format,
                            (rejects_path, report_path))
    prompts = tuple(prompts) if prompts else DEFAULT_PROMPTS
    data = read_json(captions_path)
    if type(data) is not dict:
        raise InputError(captions_path, f"not a COCO captions file: top level is {_type(data)}, expected an object")
    images, anns = data.get("images"), data.get("annotations")
    if type(images) is not list or type(anns) is not list:
        missing = "images" if type(images) is not list else "annotations"
        raise InputError(captions_path, f"not a COCO captions file: no '{missing}' list")

    listed = {L["id"] for L in images if type(L) is dict and _is_key(L.get("id"))}
    by_img, ann_rejects = _group_captions(anns, listed)
    report = CleanReport(kind="coco", source=captions_path.name, out=str(out_path), rejects=str(rejects_path),
                         report=str(report_path),
                         options={"min_side": min_side, "max_aspect": max_aspect, "max_pixels": max_pixels,
                                  "out_format": out_format, "per_caption": per_caption, "prompts": len(prompts)})
    fallback = captions_path.stem
    nworkers = resolve_workers(workers)

    # Structure first (malformed, no_caption), then every distinct image once, then decide in order.
    plan: list[tuple] = []  # (index, rid, code, detail, listing, file_name, stem, captions)
    for i, L in enumerate(images):
        if type(L) is not dict:
            plan.append((i, f"{fallback}-{i}", "malformed", f"image listing is {_type(L)}, expected an object", L, None, None, None))
            continue
        fn = L.get("file_name")
        if type(fn) is not str:
            why = "has no file_name" if "file_name" not in L else f"file_name is {_type(fn)}, expected a string"
            plan.append((i, f"{fallback}-{i}", "malformed", f"image listing {why}", L, None, None, None))
            continue
        stem = Path(fn).stem
        img_id = L.get("id")
        if not _is_key(img_id):
            why = "has no id" if "id" not in L else f"id is {_type(img_id)}, expected an integer"
            plan.append((i, stem, "malformed", f"image listing {why}", L, None, None, None))
            continue
        caps = by_img.get(img_id)
        if not caps:
            plan.append((i, stem, "no_caption", f"no non-blank caption for image id {img_id}", L, None, None, None))
            continue
        plan.append((i, stem, None, "", L, fn, stem, caps))

    with ImageChecker(str(images_root), workers=nworkers, min_side=min_side, max_aspect=max_aspect,
                      max_pixels=max_pixels, on_done=(lambda n: progress(0, n)) if progress else None) as checker, \
            Sink(rejects_path, "jsonl") as rejects, Sink(out_path, fmt) as out:
        for p in plan:
            if p[2] is None:
                checker.request(p[5])
        checker.drain()
        dec = Decider(checker, out, rejects, report, captions_path.name)
        messages = out_format == "messages"

        def write(i: int, rid: str, rec: dict[str, Any], values: list[str], L: Any, extra: dict[str, Any]) -> bool:
            key = sample_key([rec["image"]], ["human", "gpt"], values)
            data = frame(dump(to_messages(rec) if messages else rec), fmt == "json")
            return dec.decide(i, rid, [rec["image"]], key, data, L, extra)

        # Units (report ``input``): a listing rejected as a whole counts once; a listing that reaches
        # the decision counts once per record it can produce (1, or one per valid caption with
        # --per-caption); an annotation rejected on its own counts once. Each unit ends in OUT or
        # the rejects file, so written + rejected == input.
        units = len(ann_rejects)
        stems: set[str] = set()
        kind = {"kind": "image"}
        for i, rid, code, detail, L, fn, stem, caps in plan:
            units += len(caps) if per_caption and code is None and checker.cache[fn][0] is None and stem not in stems else 1
            if code is not None:
                dec.reject(i, rid, code, detail, dump(L), kind)
                continue
            v = checker.cache[fn]
            if v[0] is not None:
                dec.reject(i, rid, v[0], v[1], dump(L), kind)
                continue
            if stem in stems:
                dec.reject(i, rid, "duplicate_id", f"id {stem!r} (the file stem) was already written", dump(L), kind)
                continue
            human = {"from": "human", "value": prompt_for(stem, prompts)}
            w, h = v[2], v[3]
            if not per_caption:
                rec = {"id": stem, "image": fn, "conversations": [human, {"from": "gpt", "value": caps[0][1]}],
                       "captions": [c for _, c in caps], "width": w, "height": h}
                if write(i, stem, rec, [human["value"], caps[0][1]], L, kind):
                    stems.add(stem)
                continue
            wrote = False
            for aid, cap in caps:
                cid = f"{stem}_{aid}"
                rec = {"id": cid, "image": fn, "conversations": [human, {"from": "gpt", "value": cap}],
                       "annotation_id": aid, "width": w, "height": h}
                wrote |= write(i, cid, rec, [human["value"], cap], L, {"kind": "image", "annotation_id": aid})
            if wrote:
                stems.add(stem)
        for j, rid, code, detail, a in ann_rejects:
            dec.reject(j, rid, code, detail, dump(a), {"kind": "annotation"})
        report.input = units
        report.written = out.count
        report.images_checked = checker.checked
        report.extra = {"listings": len(images), "annotations": len(anns), "annotations_rejected": len(ann_rejects),
                        "captions_used": sum(len(c) for c in by_img.values())}
    report.write(report_path)
    return report
