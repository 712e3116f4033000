"""`mmdata clean` under faults and awkward input (issue 14, CONTRACT s.9): SIGKILL leaves no live
worker, COCO listings that share an id, the wrong COCO file kind, BOM and invalid UTF-8 in COCO,
trailing-slash paths, oversized text, deeply nested values, and `--rekey`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mmdata.clean import clean_coco, clean_llava
from mmdata.errors import InputError
from mmdata.records import normalize, validate_record

HERE = Path(__file__).resolve().parents[1]


def conv(q: str, a: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def _children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(d))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_leaves_no_live_worker(tmp_path: Path) -> None:
    """SIGKILL `mmdata clean llava` while its 2 pool workers parse: both are gone soon after, and no
    partial OUT is left under its name."""
    src = tmp_path / "big.jsonl"
    line = json.dumps({"conversations": conv("What is in this long question? " * 8, "An answer. " * 20)})
    with open(src, "w") as f:
        for i in range(150_000):
            f.write(line.replace("What", f"W{i}", 1) + "\n")
    (tmp_path / "img").mkdir()
    out = tmp_path / "o.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "mmdata.cli", "clean", "llava", str(src), "--images",
                             str(tmp_path / "img"), "--out", str(out), "--workers", "2", "-q"],
                            cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(kids) < 2 and proc.poll() is None:
            kids = _children(proc.pid)
            time.sleep(0.02)
        assert len(kids) >= 2, "the pool workers never started (the run ended first?)"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.05)
        assert not any(_alive(k) for k in kids), "a pool worker outlived the killed clean"
        assert not out.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        for k in kids:  # never leave our own orphans behind when the assertion fails
            if _alive(k):
                os.kill(k, signal.SIGKILL)


@pytest.fixture()
def coco_dir(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "img" / name)
    return tmp_path


def _rejects(rep) -> list[dict]:
    return [json.loads(x) for x in Path(rep.rejects).read_text().splitlines()]


def test_coco_listings_sharing_an_id(coco_dir: Path) -> None:
    """The second listing of image id 1 is duplicate_id, never given the first listing's captions."""
    data = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
            "annotations": [{"id": 10, "image_id": 1, "caption": "A red square."}]}
    (coco_dir / "c.json").write_text(json.dumps(data))
    rep = clean_coco(coco_dir / "c.json", coco_dir / "img", coco_dir / "o.json", workers=1)
    recs = json.loads((coco_dir / "o.json").read_text())
    assert [(r["id"], r["image"], r["captions"]) for r in recs] == [("a", "a.jpg", ["A red square."])]
    rej = _rejects(rep)
    assert [(r["index"], r["id"], r["reason"]) for r in rej] == [(1, "b", "duplicate_id")]
    assert "already listed at images[0]" in rej[0]["detail"]
    assert rep.input == rep.written + rep.rejected == 2


@pytest.mark.parametrize("extra, kind", [
    ({"bbox": [0, 0, 1, 1], "category_id": 1, "segmentation": [], "area": 1, "iscrowd": 0}, "instances"),
    ({"keypoints": [0] * 51, "num_keypoints": 0, "category_id": 1}, "person keypoints"),
])
def test_coco_wrong_file_kind(coco_dir: Path, extra: dict, kind: str) -> None:
    data = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 10, "image_id": 1, **extra}],
            "categories": [{"id": 1, "name": "person"}]}
    (coco_dir / "instances_val2017.json").write_text(json.dumps(data))
    with pytest.raises(InputError) as e:
        clean_coco(coco_dir / "instances_val2017.json", coco_dir / "img", coco_dir / "o.json", workers=1)
    msg = str(e.value)
    assert f"a COCO {kind}" in msg and "captions_*.json" in msg and "\n" not in msg
    assert not (coco_dir / "o.json").exists()


def test_coco_instances_anchor_exits_2() -> None:
    anchor = HERE.parent / "shared" / "anchor-data" / "coco"
    if not (anchor / "instances_val2017_mini.json").exists():
        pytest.skip("anchor data absent")
    p = subprocess.run([sys.executable, "-m", "mmdata.cli", "clean", "coco", str(anchor / "instances_val2017_mini.json"),
                        "--images", str(anchor / "images"), "--out", "/tmp/never-written-mmdata.json", "-q"],
                       cwd=HERE, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "a COCO instances (object detection) file" in p.stderr and "Traceback" not in p.stderr


def test_coco_bom_and_invalid_utf8(coco_dir: Path) -> None:
    data = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 10, "image_id": 1, "caption": "Red."}]}
    (coco_dir / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())
    rep = clean_coco(coco_dir / "bom.json", coco_dir / "img", coco_dir / "o.json", workers=1)
    assert rep.written == 1
    text = json.dumps(data, indent=1).encode().replace(b"Red.", b"R\xffd.")
    (coco_dir / "bad.json").write_bytes(text)
    line = text[:text.index(b"\xff")].count(b"\n") + 1
    col = len(text[:text.index(b"\xff")].rsplit(b"\n", 1)[1]) + 1
    with pytest.raises(InputError) as e:
        clean_coco(coco_dir / "bad.json", coco_dir / "img", coco_dir / "o2.json", workers=1)
    assert (e.value.line, e.value.col) == (line, col) and "0xff" in e.value.message


def test_trailing_slash_path_is_unsafe(coco_dir: Path) -> None:
    """``a.jpg/`` names a folder: unsafe_path in clean, and shard's check of clean records refuses it."""
    recs = [{"id": "s", "image": "a.jpg/", "conversations": conv("<image>\nWhat?", "Red.")},
            {"id": "t", "image": "a.jpg", "conversations": conv("<image>\nWhat?", "Red!")}]
    (coco_dir / "in.json").write_text(json.dumps(recs))
    rep = clean_llava(coco_dir / "in.json", coco_dir / "img", coco_dir / "o.json", workers=1)
    rej = _rejects(rep)
    assert [(r["id"], r["reason"]) for r in rej] == [("s", "unsafe_path")]
    assert "ends with a path separator" in rej[0]["detail"]
    assert ("unsafe_path", "a.jpg/: ends with a path separator (names a folder, not an image file)") in validate_record(recs[0])


def test_text_too_long(tmp_path: Path) -> None:
    """Over --max-text-chars (system and stripped turns counted) is text_too_long, in clean and in
    `normalize` (which shard runs on every record) with its default of 1,000,000."""
    big = "x" * (1_000_000 - 2 + 1)  # with "Hi": one character over
    assert normalize({"conversations": conv("Hi", big)}, "d").code == "text_too_long"
    assert normalize({"conversations": conv("Hi", big[:-1])}, "d").code is None
    assert validate_record({"id": "d", "conversations": conv("Hi", big)})[0][0] == "text_too_long"
    assert normalize({"messages": [{"role": "user", "content": big}, {"role": "assistant", "content": "ok"}]}, "d").code \
        == "text_too_long"
    recs = [{"id": "a", "conversations": conv("Hi", "x" * 50)},
            {"id": "b", "system": "s", "conversations": [{"from": "system", "value": "  " + "s" * 31}] + conv("Hi", "x" * 20)},
            {"id": "c", "conversations": conv("Hi", "x" * 51)}]
    (tmp_path / "img").mkdir()
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rep = clean_llava(tmp_path / "in.jsonl", tmp_path / "img", tmp_path / "o.jsonl", workers=1, max_text_chars=52)
    rej = _rejects(rep)
    assert [(r["id"], r["reason"]) for r in rej] == [("b", "text_too_long"), ("c", "text_too_long")]
    assert rej[0]["detail"] == "53 characters of text, more than 52"
    assert json.loads(Path(rep.report).read_text())["text_too_long"] == 2


def test_deeply_nested_values(tmp_path: Path) -> None:
    """A value nested 600 levels deep (orjson reads 1024 but writes 255) is written, not a crash;
    deeper than the readers go is one error line naming the file."""
    (tmp_path / "img").mkdir()
    deep = "[" * 600 + "]" * 600
    ok = '{"id": "x", "meta": %s, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}'
    (tmp_path / "a.jsonl").write_text(ok % deep + "\n")
    rep = clean_llava(tmp_path / "a.jsonl", tmp_path / "img", tmp_path / "o.jsonl", workers=1)
    assert rep.written == 1
    assert json.loads((tmp_path / "o.jsonl").read_text())["meta"] == json.loads(deep)
    (tmp_path / "b.json").write_text("[" + ok % ("[" * 5000 + "]" * 5000) + "]")
    with pytest.raises(InputError) as e:
        clean_llava(tmp_path / "b.json", tmp_path / "img", tmp_path / "o2.jsonl", workers=1)
    assert "depth limit" in e.value.message and e.value.line == 1


@pytest.mark.parametrize("name", ["in.json", "in.jsonl"])
def test_rekey_text_only(tmp_path: Path, name: str) -> None:
    """--rekey on text-only records (the engine's block-write path), JSON array and Lines: repeats become
    <id>-<n>, a literal id taken by a rekey moves on, true duplicates stay duplicate_sample."""
    recs = [{"id": "q", "conversations": conv("one", "1")}, {"id": "q", "conversations": conv("two", "2")},
            {"id": "q-1", "conversations": conv("three", "3")}, {"id": "q", "conversations": conv("two", "2")},
            {"id": 7, "conversations": conv("four", "4")}, {"id": "q", "conversations": conv("five", "5")}]
    (tmp_path / "img").mkdir()
    src = tmp_path / name
    if name.endswith(".jsonl"):
        src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    else:
        src.write_text(json.dumps(recs))
    out = tmp_path / ("o" + src.suffix)
    rep = clean_llava(src, tmp_path / "img", out, workers=1, rekey=True)
    got = [json.loads(x) for x in out.read_text().splitlines()] if out.suffix == ".jsonl" else json.loads(out.read_text())
    assert [r["id"] for r in got] == ["q", "q-1", "q-1-1", "7", "q-2"]
    assert [(r["id"], r["reason"]) for r in _rejects(rep)] == [("q", "duplicate_sample")]
    assert rep.extra["rekeyed"] == 3
    again = tmp_path / ("again" + src.suffix)
    clean_llava(src, tmp_path / "img", again, workers=2, rekey=True)
    assert again.read_bytes() == out.read_bytes()
