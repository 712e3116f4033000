"""`mmdata clean` against the fixtures' declared outcomes: every input record of every dirty file ends
where expected.json (written from docs/clean-rules.md, not from clean) says, with the expected id and
output record; the rejects carry the original record; the report counts add up; reruns are
byte-identical whatever --workers."""

from __future__ import annotations

import atexit
import collections
import json
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from fixtures.generate import generate
from mmdata.clean import DEFAULT_PROMPTS, clean_coco, clean_llava
from mmdata.records import REASONS, to_messages

_FX: dict[str, Any] = {}
LLAVA_FILES = ("llava/llava.json", "llava/llava.jsonl", "messages/messages.json")


def _fixtures() -> dict[str, Any]:
    """The small dirty set, generated once per test session (also at collection, to parametrise)."""
    if not _FX:
        root = Path(tempfile.mkdtemp(prefix="mmdata-clean-fx-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        paths = generate(root / "small", seed=0)
        _FX.update(paths=paths, expected=json.loads(Path(paths["expected"]).read_text()))
    return _FX


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "llava_case" in metafunc.fixturenames:
        exp = _fixtures()["expected"]
        cases = [(f, i, exp[f][i]) for f in LLAVA_FILES for i in sorted(exp[f], key=int)]
        metafunc.parametrize("llava_case", cases, ids=[f"{f}[{i}]-{o}" for f, i, o in cases])
    if "coco_case" in metafunc.fixturenames:
        exp = _fixtures()["expected"]["coco/captions.json"]
        cases = [("image", i, o) for i, o in sorted(exp["images"].items(), key=lambda x: int(x[0]))]
        cases += [("annotation", i, o) for i, o in sorted(exp["annotations"].items(), key=lambda x: int(x[0]))]
        metafunc.parametrize("coco_case", cases, ids=[f"{k}[{i}]-{o}" for k, i, o in cases])


def _read_records(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        return [orjson.loads(line) for line in data.splitlines()]
    return orjson.loads(data)


def _read_rejects(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="session")
def fx() -> dict[str, Any]:
    return _fixtures()


@pytest.fixture(scope="session")
def runs(fx: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One clean run per input file (workers 1 for .json, 2 for the others), with parsed outputs."""
    root = Path(fx["paths"]["root"])
    out_dir = tmp_path_factory.mktemp("clean-runs")
    res: dict[str, dict[str, Any]] = {}
    for rel, workers, out_name in (("llava/llava.json", 1, "llava_out.json"), ("llava/llava.jsonl", 2, "llava_l_out.jsonl"),
                                   ("messages/messages.json", 2, "messages_out.json")):
        out = out_dir / out_name
        rep = clean_llava(root / rel, root / "images", out, workers=workers)
        res[rel] = {"report": rep, "out": out, "records": _read_records(out),
                    "rejects_path": Path(rep.rejects), "rejects": _read_rejects(Path(rep.rejects)),
                    "report_json": json.loads(Path(rep.report).read_text())}
    out = out_dir / "coco_out.json"
    rep = clean_coco(root / "coco/captions.json", root / "images", out, workers=2)
    res["coco/captions.json"] = {"report": rep, "out": out, "records": _read_records(out),
                                 "rejects": _read_rejects(Path(rep.rejects))}
    return res


def _inputs(fx: dict[str, Any], rel: str) -> list[Any]:
    return _read_records(Path(fx["paths"]["root"]) / rel) if rel.endswith(".jsonl") else \
        json.loads((Path(fx["paths"]["root"]) / rel).read_text())


# ---- every record ------------------------------------------------------------------------------

def test_llava_record_outcome(llava_case: tuple[str, str, str], fx: dict[str, Any], runs: dict[str, Any]) -> None:
    rel, idx, outcome = llava_case
    run = runs[rel]
    inputs = _inputs(fx, rel)
    rejects = {r["index"]: r for r in run["rejects"]}
    i = int(idx)
    if outcome == "ok":
        assert i not in rejects, f"record {i} rejected: {rejects.get(i)}"
        ok_indices = sorted(int(k) for k, v in fx["expected"][rel].items() if v == "ok")
        rec = run["records"][ok_indices.index(i)]
        assert rec["id"] == fx["expected"]["ids"][rel][idx]
        want = fx["expected"]["outputs"][rel].get(idx)
        if want is not None:
            assert rec == want
            assert list(rec)[:2] == ["id", "image"] if "image" in rec else next(iter(rec)) == "id"
    else:
        assert i in rejects, f"record {i} written, expected {outcome}"
        line = rejects[i]
        assert line["reason"] == outcome, line["detail"]
        assert line["record"] == inputs[i]  # the original record, untouched
        assert line["input"] == Path(rel).name
        assert isinstance(line["id"], str) and line["detail"]
        assert list(line) == ["index", "id", "reason", "detail", "input", "record"]


def test_coco_listing_outcome(coco_case: tuple[str, str, str], fx: dict[str, Any], runs: dict[str, Any]) -> None:
    kind, idx, outcome = coco_case
    run = runs["coco/captions.json"]
    data = json.loads((Path(fx["paths"]["root"]) / "coco/captions.json").read_text())
    rejects = {(r["kind"], r["index"]): r for r in run["rejects"]}
    i = int(idx)
    if outcome == "ok":
        assert (kind, i) not in rejects, rejects.get((kind, i))
        want = fx["expected"]["outputs"]["coco/captions.json"][idx]
        rec = next(r for r in run["records"] if r["id"] == want["id"])
        stem = want["id"]
        assert rec == {"id": stem, "image": want["image"],
                       "conversations": [
                           {"from": "human", "value": "<image>\n" + DEFAULT_PROMPTS[zlib.crc32(stem.encode()) % len(DEFAULT_PROMPTS)]},
                           {"from": "gpt", "value": want["answer"]}],
                       "captions": want["captions"], "width": want["width"], "height": want["height"]}
    else:
        line = rejects[(kind, i)]
        assert line["reason"] == outcome, line["detail"]
        assert line["record"] == data["images" if kind == "image" else "annotations"][i]
        if outcome == "orphan_annotation":
            assert line["id"] == str(line["record"]["id"])


# ---- whole files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", LLAVA_FILES)
def test_report_counts(rel: str, fx: dict[str, Any], runs: dict[str, Any]) -> None:
    exp = fx["expected"][rel]
    rep = runs[rel]["report_json"]
    counts = collections.Counter(exp.values())
    assert rep["input"] == len(exp)
    assert rep["written"] == counts["ok"] == len(runs[rel]["records"])
    assert rep["rejected"] == len(exp) - counts["ok"] == len(runs[rel]["rejects"])
    assert rep["by_reason"] == {code: counts.get(code, 0) for code in REASONS}
    assert [r["index"] for r in runs[rel]["rejects"]] == sorted(r["index"] for r in runs[rel]["rejects"])
    ids = [r["id"] for r in runs[rel]["records"]]
    assert len(ids) == len(set(ids)) and all(isinstance(x, str) for x in ids)


def test_coco_report_and_order(fx: dict[str, Any], runs: dict[str, Any]) -> None:
    exp = fx["expected"]["coco/captions.json"]
    run = runs["coco/captions.json"]
    rep = json.loads(Path(run["report"].report).read_text())
    listing = collections.Counter(exp["images"].values())
    ann = collections.Counter(exp["annotations"].values())
    assert rep["input"] == len(exp["images"]) + len(exp["annotations"]) == rep["listings"] + rep["annotations_rejected"]
    assert rep["written"] == listing["ok"] == len(run["records"])
    assert rep["rejected"] == len(exp["images"]) - listing["ok"] + len(exp["annotations"])
    assert rep["by_reason"]["orphan_annotation"] == ann["orphan_annotation"] == len(exp["orphans"])
    assert rep["by_reason"]["malformed"] == listing["malformed"] + ann["malformed"]
    # records in `images` order; listing rejects (in order) before annotation rejects (in order)
    ok = [int(i) for i, o in sorted(exp["images"].items(), key=lambda x: int(x[0])) if o == "ok"]
    assert [r["id"] for r in run["records"]] == [exp_id for exp_id in (fx["expected"]["ids"]["coco/captions.json"][str(i)] for i in ok)]
    keys = [(r["kind"] == "annotation", r["index"]) for r in run["rejects"]]
    assert keys == sorted(keys)


def test_byte_identical_whatever_workers(fx: dict[str, Any], runs: dict[str, Any], tmp_path: Path) -> None:
    root = Path(fx["paths"]["root"])
    out = tmp_path / "llava_out.json"
    clean_llava(root / "llava/llava.json", root / "images", out, workers=2)
    first = runs["llava/llava.json"]
    assert out.read_bytes() == first["out"].read_bytes()
    assert (tmp_path / "llava_out.rejects.jsonl").read_bytes() == first["rejects_path"].read_bytes()
    assert (tmp_path / "llava_out.report.json").read_bytes() == Path(first["report"].report).read_bytes()


def test_json_and_jsonl_input_and_output_agree(runs: dict[str, Any]) -> None:
    a, b = runs["llava/llava.json"], runs["llava/llava.jsonl"]
    assert a["out"].read_bytes().startswith(b"[\n{") and a["out"].read_bytes().endswith(b"}\n]\n")
    assert b["out"].read_bytes().count(b"\n") == len(b["records"])
    assert a["records"] == b["records"]
    strip = [{k: v for k, v in r.items() if k != "input"} for r in a["rejects"]]
    assert strip == [{k: v for k, v in r.items() if k != "input"} for r in b["rejects"]]


def test_messages_content_list_flattened(runs: dict[str, Any], fx: dict[str, Any]) -> None:
    exp = fx["expected"]["ids"]["messages/messages.json"]
    by_id = {r["id"]: r for r in runs["messages/messages.json"]["records"]}
    rec = by_id[exp["3"]]
    assert rec["image"] == "photo_002.jpg"
    assert rec["conversations"] == [{"from": "human", "value": "<image>What is in this image?"},
                                    {"from": "gpt", "value": "A flock of birds."}]
    rec = by_id[exp["4"]]
    assert rec["image"] == "sub/photo_s1.jpg"
    assert rec["conversations"][0]["value"] == "<image>Describe the photo."
    assert by_id[exp["2"]]["system"] == "You are a careful visual assistant."


def test_out_format_messages(fx: dict[str, Any], runs: dict[str, Any], tmp_path: Path) -> None:
    root = Path(fx["paths"]["root"])
    out = tmp_path / "m.jsonl"
    rep = clean_llava(root / "llava/llava.json", root / "images", out, out_format="messages", workers=1)
    got = _read_records(out)
    assert rep.written == len(got) == len(runs["llava/llava.json"]["records"])
    assert got == [to_messages(r) for r in runs["llava/llava.json"]["records"]]
    first = got[0]
    assert first == {"id": "000000033471",
                     "messages": [{"role": "user", "content": "<image>\nWhat is the color of the car?"},
                                  {"role": "assistant", "content": "The car is red."}],
                     "images": ["photo_000.jpg"]}
    sys_rec = next(r for r in got if r["id"] == "sys-0001")
    assert sys_rec["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert next(r for r in got if r["id"] == "text-0001")["images"] == []
    # same checks either way: the rejects are identical
    assert (tmp_path / "m.rejects.jsonl").read_bytes().replace(b'"input":"llava.json"', b"") == \
        runs["llava/llava.json"]["rejects_path"].read_bytes().replace(b'"input":"llava.json"', b"")


def test_messages_output_cleans_again_to_the_same_records(runs: dict[str, Any], fx: dict[str, Any], tmp_path: Path) -> None:
    """--out-format messages feeds back into `clean llava` (auto-detected) with nothing lost or changed."""
    root = Path(fx["paths"]["root"])
    mid = tmp_path / "m.json"
    clean_llava(root / "llava/llava.json", root / "images", mid, out_format="messages", workers=1)
    again = tmp_path / "again.json"
    rep = clean_llava(mid, root / "images", again, workers=1)
    assert rep.rejected == 0
    assert _read_records(again) == runs["llava/llava.json"]["records"]


def test_coco_per_caption(fx: dict[str, Any], tmp_path: Path) -> None:
    root = Path(fx["paths"]["root"])
    out = tmp_path / "pc.jsonl"
    clean_coco(root / "coco/captions.json", root / "images", out, per_caption=True, workers=1)
    got = _read_records(out)
    outs = fx["expected"]["outputs"]["coco/captions.json"]
    ok = [outs[i] for i in sorted(outs, key=int)]
    assert [r["conversations"][1]["value"] for r in got] == [c for o in ok for c in o["captions"]]
    assert all(r["id"] == f"{Path(r['image']).stem}_{r['annotation_id']}" for r in got)
    first = got[0]
    assert first["id"].startswith(ok[0]["id"] + "_") and first["conversations"][1]["value"] == ok[0]["answer"]


def test_coco_prompts_file(fx: dict[str, Any], tmp_path: Path) -> None:
    root = Path(fx["paths"]["root"])
    out = tmp_path / "p.json"
    clean_coco(root / "coco/captions.json", root / "images", out, prompts=["Caption this.", "What is shown?"], workers=1)
    for r in _read_records(out):
        want = ["Caption this.", "What is shown?"][zlib.crc32(r["id"].encode()) % 2]
        assert r["conversations"][0]["value"] == "<image>\n" + want


def test_exif_orientation_sizes(fx: dict[str, Any], runs: dict[str, Any]) -> None:
    """width/height in coco output are after EXIF orientation (stored 320x200, shown 200x320)."""
    rec = next(r for r in runs["coco/captions.json"]["records"] if r["image"] == "exif_rot6.jpg")
    assert (rec["width"], rec["height"]) == (200, 320)


def test_min_side_and_max_aspect_options(fx: dict[str, Any], tmp_path: Path) -> None:
    root = Path(fx["paths"]["root"])
    rep = clean_llava(root / "llava/llava.json", root / "images", tmp_path / "o.json", min_side=10, max_aspect=250,
                      workers=1)
    by = {r["id"]: r["reason"] for r in _read_rejects(tmp_path / "o.rejects.jsonl")}
    written = {r["id"] for r in _read_records(tmp_path / "o.json")}
    assert {"s-0001", "s-0002", "s-0004"} <= written  # 20x20, 27x100 and 6000x28 (aspect 214) now pass
    assert by["s-0003"] == "bad_aspect_ratio"  # 6000x20: no longer too small, but aspect 300 > 250
    assert rep.by_reason["image_too_small"] == 0 and rep.by_reason["bad_aspect_ratio"] == 1


def test_duplicate_details_name_the_first(runs: dict[str, Any]) -> None:
    by_id = {r["id"]: r for r in runs["llava/llava.json"]["rejects"]}
    assert by_id["copy-0001"]["detail"] == "same images and conversation as '000000033471'"
    assert by_id["777"]["detail"] == "id '777' was already written"


@pytest.mark.parametrize("rel", ["llava/llava.json", "llava/llava.jsonl"])
def test_many_small_spans_same_bytes(rel: str, fx: dict[str, Any], runs: dict[str, Any], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Records cut into spans of a few records each, across 2 workers, with a window of 4 waiting
    records and image chunks of 2: the same OUT and rejects."""
    from mmdata.clean import checks, engine, fastread
    from mmdata.clean.sources import llava

    monkeypatch.setattr(fastread, "_LINE_BLOCK", 300)
    monkeypatch.setattr(llava, "_BATCH", 3)
    monkeypatch.setattr(llava, "_INLINE_BYTES", 0)  # parse in the workers, however small the input
    monkeypatch.setattr(engine, "_WINDOW", 4)
    monkeypatch.setattr(checks, "_CHUNK", 2)
    root = Path(fx["paths"]["root"])
    out = tmp_path / runs[rel]["out"].name
    clean_llava(root / rel, root / "images", out, workers=2)
    assert out.read_bytes() == runs[rel]["out"].read_bytes()
    rej = out.with_suffix("").as_posix() + ".rejects.jsonl"
    assert Path(rej).read_bytes() == Path(runs[rel]["report"].rejects).read_bytes()


def _check_report_invariant(rep: dict[str, Any], out: Path, rejects: Path) -> None:
    assert rep["written"] + rep["rejected"] == rep["input"]
    assert rep["written"] == len(_read_records(out)) and rep["rejected"] == len(_read_rejects(rejects))
    assert {code: rep[code] for code in REASONS} == rep["by_reason"]  # a count per reason, top level too
    assert sum(rep["by_reason"].values()) == rep["rejected"]
    assert list(rep)[:3] == ["input", "written", "rejected"]


@pytest.mark.parametrize("rel", [*LLAVA_FILES, "coco/captions.json", "coco/captions.json --per-caption"])
def test_report_adds_up(rel: str, fx: dict[str, Any], tmp_path: Path) -> None:
    """written + rejected == input for every input, and each reason is counted at the top level."""
    root = Path(fx["paths"]["root"])
    out = tmp_path / "o.jsonl"
    if rel.startswith("coco"):
        rep = clean_coco(root / "coco/captions.json", root / "images", out, per_caption="per-caption" in rel, workers=1)
    else:
        rep = clean_llava(root / rel, root / "images", out, workers=1)
    _check_report_invariant(json.loads(Path(rep.report).read_text()), out, Path(rep.rejects))
