"""`mmdata clean` on real files from ../shared/anchor-data (COCO captions mini, LLaVA jsonl,
LLaMA-Factory messages demos). Skipped when the folder is absent."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest

from mmdata.clean import clean_coco, clean_llava

ANCHOR = Path(__file__).resolve().parents[1].parent / "shared" / "anchor-data"
pytestmark = pytest.mark.skipif(not ANCHOR.is_dir(), reason=f"anchor data not found at {ANCHOR}")


def _rejects(rep) -> list[dict]:
    return [json.loads(x) for x in Path(rep.rejects).read_text().splitlines()]


def test_coco_val_mini(tmp_path: Path) -> None:
    """79 listings, 4 images present (3 of them listed): 3 records, the rest missing_image, no caption lost."""
    src = json.loads((ANCHOR / "coco/captions_val2017_mini.json").read_text())
    rep = clean_coco(ANCHOR / "coco/captions_val2017_mini.json", ANCHOR / "coco/images", tmp_path / "c.json", workers=2)
    recs = json.loads((tmp_path / "c.json").read_text())
    present = {p.name for p in (ANCHOR / "coco/images").iterdir()}
    listed_present = [L for L in src["images"] if L["file_name"] in present]
    assert rep.input == 79 and rep.written == len(listed_present) == 3
    assert rep.by_reason["missing_image"] == 76 and rep.rejected == 76
    assert [r["id"] for r in recs] == [L["file_name"][:-4] for L in listed_present]
    sizes = {"000000117645": (640, 480), "000000000802": (424, 640), "000000549055": (640, 304)}
    for r in recs:
        assert (r["width"], r["height"]) == sizes[r["id"]]
        img_id = int(r["id"])
        caps = sorted((a["id"], a["caption"].strip()) for a in src["annotations"] if a["image_id"] == img_id)
        assert r["captions"] == [c for _, c in caps] and r["conversations"][1]["value"] == caps[0][1]
        assert all(c == c.strip() for c in r["captions"])
        assert r["conversations"][0]["value"].startswith("<image>\n")


def test_coco_train_mini_all_missing(tmp_path: Path) -> None:
    rep = clean_coco(ANCHOR / "coco/captions_train2017_mini.json", ANCHOR / "coco/images", tmp_path / "c.jsonl", workers=1)
    assert (rep.input, rep.written, rep.by_reason["missing_image"]) == (80, 0, 80)
    assert rep.extra["annotations"] == 400 and rep.extra["annotations_rejected"] == 0


def test_mllm_demo_messages(tmp_path: Path) -> None:
    src = json.loads((ANCHOR / "messages/mllm_demo.json").read_text())
    rep = clean_llava(ANCHOR / "messages/mllm_demo.json", ANCHOR / "messages", tmp_path / "m.json", workers=1)
    recs = json.loads((tmp_path / "m.json").read_text())
    assert rep.input == len(src) and rep.written == len(src), _rejects(rep)
    first = recs[0]
    assert first["id"] == "mllm_demo-0"
    assert first["image"] == ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"]  # the same image twice, kept twice
    assert first["conversations"][2] == {"from": "human", "value": "What are they doing?<image>"}
    assert rep.images_checked == 3  # three distinct files, each checked once


def test_v1_content_list_equals_mllm_demo(tmp_path: Path) -> None:
    """The content-list file flattens to exactly the conversations of mllm_demo.json (its paths say data/...)."""
    root = tmp_path / "root"
    shutil.copytree(ANCHOR / "messages/mllm_demo_data", root / "data/mllm_demo_data")
    rep = clean_llava(ANCHOR / "messages/v1_multimodal_demo.jsonl", root, tmp_path / "v1.jsonl", workers=1)
    v1 = [json.loads(x) for x in (tmp_path / "v1.jsonl").read_text().splitlines()]
    clean_llava(ANCHOR / "messages/mllm_demo.json", ANCHOR / "messages", tmp_path / "m.json", workers=1)
    demo = json.loads((tmp_path / "m.json").read_text())
    n = sum(1 for line in (ANCHOR / "messages/v1_multimodal_demo.jsonl").read_text().splitlines() if line.strip())
    assert rep.input == n and rep.written + rep.rejected == n
    by_conv = {json.dumps(r["conversations"]): r for r in demo}
    for r in v1:
        twin = by_conv.get(json.dumps(r["conversations"]))
        assert twin is not None, r
        imgs = [twin["image"]] if isinstance(twin["image"], str) else twin["image"]
        mine = [r["image"]] if isinstance(r["image"], str) else r["image"]
        assert mine == ["data/" + p for p in imgs]
    # v1 repeats its samples: every reject is a duplicate of a written record, nothing else
    assert {r["reason"] for r in _rejects(rep)} <= {"duplicate_sample"}


def test_v1_paths_relative_to_another_root_are_missing(tmp_path: Path) -> None:
    rep = clean_llava(ANCHOR / "messages/v1_multimodal_demo.jsonl", ANCHOR / "messages", tmp_path / "v1.json", workers=1)
    assert rep.written == 0 and rep.by_reason["missing_image"] == rep.input


def test_llava_gpt4_qa_instruction_output(tmp_path: Path) -> None:
    """{instruction, output} records become one-turn conversations; without their COCO images: missing_image."""
    src = [json.loads(x) for x in (ANCHOR / "llava/coco2014_val_gpt4_qa_30x3.jsonl").read_text().splitlines()]
    rep = clean_llava(ANCHOR / "llava/coco2014_val_gpt4_qa_30x3.jsonl", ANCHOR / "coco/images", tmp_path / "q.json", workers=1)
    assert rep.input == 90 and rep.by_reason["missing_image"] == 90
    assert {r["record"]["id"] for r in _rejects(rep)} == {s["id"] for s in src}
    # with the images present, ids repeat 3x per image: the later two are duplicate_id (contract s.2)
    root = tmp_path / "img"
    root.mkdir()
    one = next((ANCHOR / "coco/images").glob("*.jpg"))
    for name in {s["image"] for s in src}:
        shutil.copyfile(one, root / name)
    rep = clean_llava(ANCHOR / "llava/coco2014_val_gpt4_qa_30x3.jsonl", root, tmp_path / "q2.json", workers=2)
    recs = json.loads((tmp_path / "q2.json").read_text())
    assert rep.written == len({s["id"] for s in src}) == 30 and rep.by_reason["duplicate_id"] == 60
    assert recs[0]["conversations"] == [{"from": "human", "value": "<image>\n" + src[0]["instruction"]},
                                        {"from": "gpt", "value": src[0]["output"]}]
    assert recs[0]["type"] == src[0]["type"] and "instruction" not in recs[0]
    assert rep.hints() == ["60 of 60 rejects (100%) are duplicate_id: --rekey makes repeated ids unique as <id>-<n>"]
    # --rekey keeps all 90: the n-th repeat of an id becomes <id>-<n>, in input order
    rep = clean_llava(ANCHOR / "llava/coco2014_val_gpt4_qa_30x3.jsonl", root, tmp_path / "q3.json", workers=2, rekey=True)
    recs = json.loads((tmp_path / "q3.json").read_text())
    assert (rep.written, rep.rejected, rep.extra["rekeyed"]) == (90, 0, 60)
    seen: collections.Counter = collections.Counter()
    want = []
    for s in src:
        want.append(str(s["id"]) if not seen[s["id"]] else f"{s['id']}-{seen[s['id']]}")
        seen[s["id"]] += 1
    assert [r["id"] for r in recs] == want
    assert [r["conversations"][1]["value"] for r in recs] == [s["output"] for s in src]
    assert json.loads(Path(rep.report).read_text())["rekeyed"] == 60


@pytest.mark.parametrize("name, why", [
    ("caps_boxes_coco2014_val_80.jsonl", "a captions record"),
    ("qa90_questions.jsonl", "an evaluation question"),
    ("qa90_gpt4_answer.jsonl", "an evaluation question"),
])
def test_llava_non_conversation_files_are_malformed(tmp_path: Path, name: str, why: str) -> None:
    rep = clean_llava(ANCHOR / "llava" / name, ANCHOR / "coco/images", tmp_path / "o.json", workers=1)
    rej = _rejects(rep)
    assert rep.written == 0 and rep.by_reason["malformed"] == rep.input == len(rej)
    assert all(why in r["detail"] for r in rej)
    assert collections.Counter(r["input"] for r in rej) == {name: rep.input}
