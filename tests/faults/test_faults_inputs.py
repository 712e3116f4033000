"""Bad input that real data sets contain (issue 14 items 8, 10, 11): COCO files with a repeated image id,
a byte-order mark, invalid UTF-8 or the wrong COCO file kind; LLaVA files that reuse ids; and mistyped
commands. Each is either handled (every record accounted for) or one line naming the file, exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import faultkit as fk


def coco_clean(inp: Path, images: Path, out: Path, *extra: str) -> fk.Run:
    return fk.mmdata("clean", "coco", inp, "--images", images, "--out", out, "--workers", "1", *extra)


@pytest.fixture(scope="module")
def listings(dirty) -> list[dict]:
    """Two valid COCO image listings of the dirty fixture set."""
    d = json.loads(Path(dirty["coco"]).read_text())
    ok = [im for im in d["images"] if isinstance(im, dict) and str(im.get("file_name", "")).startswith("0000")]
    return ok[:2]


def _coco(listings: list[dict], annotations: list[dict], **extra) -> dict:
    return {"info": {}, "licenses": [], "images": listings, "annotations": annotations, **extra}


def test_coco_listings_sharing_an_id_never_swap_captions(dirty, listings, tmp_path):
    a, b = listings
    inp = tmp_path / "captions_dup.json"
    inp.write_text(json.dumps(_coco([a, dict(b, id=a["id"])], [{"id": 1, "image_id": a["id"], "caption": "A bear."}])))
    out = tmp_path / "out.json"
    r = coco_clean(inp, dirty["images"], out, "-q")
    if r.rc == 2:
        fk.assert_user_error(r, str(inp))
        return
    assert r.rc == 0, r.explain()
    written = json.loads(out.read_text())
    assert [w["image"] for w in written] == [a["file_name"]], "the second listing was written with another's captions"
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["written"] + report["rejected"] == 2


def test_coco_with_a_byte_order_mark_is_read(dirty, listings, tmp_path):
    a, _ = listings
    inp = tmp_path / "captions_bom.json"
    doc = _coco([a], [{"id": 1, "image_id": a["id"], "caption": "A bear."}])
    inp.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    out = tmp_path / "out.json"
    r = coco_clean(inp, dirty["images"], out, "-q")
    assert r.rc == 0, r.explain()
    assert [w["image"] for w in json.loads(out.read_text())] == [a["file_name"]]


def test_llava_with_a_byte_order_mark_is_read(dirty, tmp_path):
    inp = tmp_path / "bom.jsonl"
    rec = {"id": "x", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}
    inp.write_bytes(b"\xef\xbb\xbf" + json.dumps(rec).encode() + b"\n")
    out = tmp_path / "out.jsonl"
    r = fk.mmdata("clean", "llava", inp, "--images", dirty["images"], "--out", out, "-q")
    assert r.rc == 0, r.explain()
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["x"]


def test_coco_invalid_utf8_is_reported_where_it_is(dirty, listings, tmp_path):
    a, _ = listings
    raw = json.dumps(_coco([a], [{"id": 1, "image_id": a["id"], "caption": "A bear XX."}])).encode()
    raw = raw.replace(b"XX", b"\xff\xfe")
    col = raw.index(b"\xff") + 1
    inp = tmp_path / "captions_bad.json"
    inp.write_bytes(raw)
    r = coco_clean(inp, dirty["images"], tmp_path / "out.json", "-q")
    fk.assert_user_error(r, str(inp))
    m = re.search(re.escape(str(inp)) + r":(\d+):(\d+)", r.stderr)
    assert m and m[1] == "1" and abs(int(m[2]) - col) <= 2, f"expected {inp}:1:{col}\n{r.explain()}"


def test_llava_invalid_utf8_is_one_line_naming_the_line(dirty, tmp_path):
    inp = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "g", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]})
    inp.write_bytes(good.encode() + b"\n" + good.replace("A.", "A\udcff.").encode("utf-8", "surrogateescape") + b"\n")
    r = fk.mmdata("clean", "llava", inp, "--images", dirty["images"], "--out", tmp_path / "out.jsonl", "-q")
    fk.assert_user_error(r, f"{inp}:2")


def test_coco_instances_file_says_it_is_the_wrong_kind(dirty, listings, tmp_path):
    a, _ = listings
    inp = tmp_path / "instances_val2017.json"
    ann = {"id": 1, "image_id": a["id"], "bbox": [0, 0, 9, 9], "category_id": 1, "area": 81, "iscrowd": 0,
           "segmentation": []}
    inp.write_text(json.dumps(_coco([a], [ann], categories=[{"id": 1, "name": "bear"}])))
    r = coco_clean(inp, dirty["images"], tmp_path / "out.json", "-q")
    assert "Traceback" not in r.stderr and r.rc in (0, 2), r.explain()
    assert re.search(r"instances|captions_\*|not a captions file|wrong (file )?kind", r.stderr, re.I), \
        f"no hint that this is not a captions file\n{r.explain()}"


def _qa30x3(path: Path) -> int:
    """LLaVA's coco2014_val_gpt4_qa_30x3 shape: each id reused for three question kinds (6 ids: 12 of
    18 records would be rejected, a share and a count that call for a hint)."""
    recs = []
    for i in range(6):
        for kind in ("conv", "detail", "complex"):
            recs.append({"id": f"img{i}", "image": "photo_000.jpg", "conversations": [
                {"from": "human", "value": f"<image>\n{kind} question {i}?"},
                {"from": "gpt", "value": f"{kind} answer."}]})
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return len(recs)


def test_reused_ids_are_rejected_as_duplicate_id_by_default(dirty, tmp_path):
    inp = tmp_path / "qa.jsonl"
    n = _qa30x3(inp)
    out = tmp_path / "out.jsonl"
    r = fk.mmdata("clean", "llava", inp, "--images", dirty["images"], "--out", out, "-q")
    assert r.rc == 0, r.explain()
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert (report["written"], report["rejected"], report["duplicate_id"]) == (6, n - 6, n - 6)


def test_rekey_keeps_reused_ids_and_the_summary_names_the_flag(dirty, tmp_path):
    inp = tmp_path / "qa.jsonl"
    n = _qa30x3(inp)
    plain = fk.mmdata("clean", "llava", inp, "--images", dirty["images"], "--out", tmp_path / "a.jsonl")
    assert plain.rc == 0 and "--rekey" in plain.stderr, f"the summary does not point at --rekey\n{plain.explain()}"
    out = tmp_path / "b.jsonl"
    r = fk.mmdata("clean", "llava", inp, "--images", dirty["images"], "--out", out, "--rekey", "-q")
    assert r.rc == 0, r.explain()
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert len(ids) == n and len(set(ids)) == n and all(i.startswith("img") for i in ids), ids


# ---------------------------------------------------------------------------------------------
# mistyped commands and flags


@pytest.mark.parametrize("argv", [["frobnicate"], ["clean", "llava", "--bogus"], ["shard", "--max-res", "big"]],
                         ids=["command", "flag", "value"])
def test_mmdata_usage_errors_are_exit_2_without_a_traceback(argv):
    r = fk.mmdata(*argv)
    assert r.rc == 2 and "Traceback" not in r.stderr, r.explain()


@pytest.mark.parametrize("argv", [["frobnicate"], ["run", "--bogus"]], ids=["command", "flag"])
def test_mmtrain_usage_errors_are_exit_2_without_a_traceback(argv):
    r = fk.mmtrain(*argv)
    assert r.rc == 2 and "Traceback" not in r.stderr, r.explain()
    assert argv[-1] in r.stderr
