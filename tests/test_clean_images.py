"""Image checks of `clean`: each distinct image once, bombs and truncation as reasons, --max-pixels,
Pillow's own warning threshold not deciding for us."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from mmdata.clean import clean_llava
from mmdata.clean.checks import check_paths


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 200)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _rec(i: int, *images: str) -> dict:
    return {"id": f"r{i}", "image": list(images),
            "conversations": [{"from": "human", "value": "<image>" * len(images) + f"Q{i}?"}, {"from": "gpt", "value": "A."}]}


def test_each_distinct_image_checked_once(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for k in range(3):
        (tmp_path / "img" / f"{k}.jpg").write_bytes(_jpeg(64, 64))
    recs = [_rec(i, f"{i % 3}.jpg", "missing.jpg" if i == 5 else f"{(i + 1) % 3}.jpg") for i in range(40)]
    (tmp_path / "in.json").write_text(json.dumps(recs))
    rep = clean_llava(tmp_path / "in.json", tmp_path / "img", tmp_path / "o.json", workers=2)
    assert rep.images_checked == 4  # 0.jpg, 1.jpg, 2.jpg, missing.jpg
    assert (rep.written, rep.by_reason["missing_image"]) == (39, 1)


def test_truncated_and_zero_and_text(tmp_path: Path) -> None:
    data = _jpeg(400, 300)
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "z.jpg").write_bytes(b"")
    (tmp_path / "x.jpg").write_bytes(b"hello")
    (tmp_path / "ok.jpg").write_bytes(data)
    got = check_paths(str(tmp_path), ["t.jpg", "z.jpg", "x.jpg", "ok.jpg", "nope.jpg"])
    assert [v[0] for v in got] == ["unreadable_image"] * 3 + [None, "missing_image"]
    assert got[3][2:] == (400, 300)


def test_max_pixels_is_a_reason(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(_jpeg(100, 100))
    assert check_paths(str(tmp_path), ["a.jpg"], max_pixels=9_999)[0][0] == "unreadable_image"
    assert "decompression bomb" in check_paths(str(tmp_path), ["a.jpg"], max_pixels=9_999)[0][1]
    assert check_paths(str(tmp_path), ["a.jpg"], max_pixels=10_000)[0][0] is None


def test_pillow_warning_threshold_does_not_reject(tmp_path: Path, monkeypatch) -> None:
    """Between Pillow's MAX_IMAGE_PIXELS (a warning) and our --max-pixels the image is fine."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    (tmp_path / "a.jpg").write_bytes(_jpeg(90, 90))  # 8,100 px: warns in Pillow, below 2x its limit
    assert check_paths(str(tmp_path), ["a.jpg"], max_pixels=50_000)[0][0] is None
    (tmp_path / "b.jpg").write_bytes(_jpeg(120, 120))  # 14,400 px > 2 x 5,000: Pillow would raise
    assert check_paths(str(tmp_path), ["b.jpg"], max_pixels=50_000)[0][0] is None
    assert check_paths(str(tmp_path), ["b.jpg"], max_pixels=10_000)[0][0] == "unreadable_image"


def test_symlink_escape_and_directory(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "out.jpg").write_bytes(_jpeg(64, 64))
    (tmp_path / "root" / "esc.jpg").symlink_to(tmp_path / "out.jpg")
    (tmp_path / "root" / "in.jpg").symlink_to("d/real.jpg")
    (tmp_path / "root" / "d").mkdir()
    (tmp_path / "root" / "d" / "real.jpg").write_bytes(_jpeg(64, 64))
    got = check_paths(str((tmp_path / "root").resolve()), ["esc.jpg", "in.jpg", "d"])
    assert [v[0] for v in got] == ["unsafe_path", None, "missing_image"]


def test_one_file_under_several_names_decoded_once(tmp_path: Path) -> None:
    (tmp_path / "img" / "sub").mkdir(parents=True)
    (tmp_path / "img" / "a.jpg").write_bytes(_jpeg(64, 64))
    (tmp_path / "img" / "sub" / "link.jpg").symlink_to("../a.jpg")
    (tmp_path / "img" / "tiny.jpg").write_bytes(_jpeg(8, 8))
    names = ["a.jpg", "./a.jpg", "sub/link.jpg", "tiny.jpg", "./tiny.jpg"]
    recs = [_rec(i, p) for i, p in enumerate(names)]
    (tmp_path / "in.json").write_text(json.dumps(recs))
    rep = clean_llava(tmp_path / "in.json", tmp_path / "img", tmp_path / "o.json", workers=1)
    assert rep.images_checked == 2  # a.jpg and tiny.jpg, each once whatever the name
    rej = [json.loads(x) for x in (tmp_path / "o.rejects.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["detail"]) for r in rej] == [
        ("image_too_small", "tiny.jpg: 8x8, shorter side 8 < 28"), ("image_too_small", "./tiny.jpg: 8x8, shorter side 8 < 28")]
    assert rep.written == 3
