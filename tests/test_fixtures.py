"""The fixtures generator: byte-identical reruns, every kind of dirt really present, expected.json complete."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from fixtures.generate import MAX_PIXELS, generate

REASONS = {"malformed", "bad_roles", "empty_turn", "image_token_mismatch", "unsafe_path", "missing_image",
           "unreadable_image", "image_too_small", "bad_aspect_ratio", "duplicate_id", "duplicate_sample"}


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate(tmp_path_factory.mktemp("fx") / "small", seed=0)


@pytest.fixture(scope="module")
def expected(fx: dict[str, Path]) -> dict:
    return json.loads(fx["expected"].read_text())


def _tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def test_same_seed_gives_identical_bytes(fx: dict[str, Path], tmp_path: Path) -> None:
    again = generate(tmp_path / "again", seed=0)
    a, b = _tree_digest(fx["root"]), _tree_digest(again["root"])
    assert len(a) > 60
    assert a == b


def test_rerun_into_the_same_folder_is_identical(tmp_path: Path) -> None:
    first = _tree_digest(generate(tmp_path / "x", seed=0)["root"])
    assert _tree_digest(generate(tmp_path / "x", seed=0)["root"]) == first


def test_other_seed_gives_other_images(fx: dict[str, Path], tmp_path: Path) -> None:
    other = generate(tmp_path / "other", seed=1)
    a, b = _tree_digest(fx["root"]), _tree_digest(other["root"])
    assert a.keys() == b.keys()  # same layout and records, different pixels
    assert a["images/photo_000.jpg"] != b["images/photo_000.jpg"]


def test_returned_paths_exist(fx: dict[str, Path]) -> None:
    for key in ("images", "coco", "llava_json", "llava_jsonl", "messages", "expected"):
        assert fx[key].exists(), key
    total = sum(p.stat().st_size for p in fx["root"].rglob("*") if p.is_file() and not p.is_symlink())
    assert total < 3_000_000


def test_truncated_jpeg_opens_but_fails_full_decode(fx: dict[str, Path]) -> None:
    p = fx["images"] / "truncated.jpg"
    with Image.open(p) as im:
        assert im.format == "JPEG" and im.size == (320, 240)
        with pytest.raises(OSError, match="truncated"):
            im.load()
    assert not p.read_bytes().endswith(b"\xff\xd9")


def test_disguised_and_broken_files(fx: dict[str, Path]) -> None:
    img = fx["images"]
    assert (img / "zero.jpg").stat().st_size == 0
    assert (img / "png_named.jpg").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (img / "gif_named.jpg").read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    with Image.open(img / "png_named.jpg") as im:
        assert im.format == "PNG"
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(img / "not_image.jpg")
    assert (img / "folder.jpg").is_dir()
    for name in ("missing_001.jpg", "missing_002.jpg", "missing_003.jpg", "sub/missing_004.jpg"):
        assert not (img / name).exists()


@pytest.mark.parametrize("name, mode, fmt", [("grey.jpg", "L", "JPEG"), ("cmyk.jpg", "CMYK", "JPEG"),
                                             ("palette.png", "P", "PNG"), ("rgba.png", "RGBA", "PNG"),
                                             ("gif_named.jpg", "P", "GIF")])
def test_image_modes(fx: dict[str, Path], name: str, mode: str, fmt: str) -> None:
    with Image.open(fx["images"] / name) as im:
        assert (im.mode, im.format) == (mode, fmt)
        im.load()


@pytest.mark.parametrize("name, tag", [("exif_rot6.jpg", 6), ("exif_rot8.jpg", 8), ("exif_rot1.jpg", 1)])
def test_exif_orientation_tags(fx: dict[str, Path], name: str, tag: int) -> None:
    with Image.open(fx["images"] / name) as im:
        assert im.getexif().get(0x0112) == tag
        assert im.size == (320, 200)  # stored landscape
        shown = ImageOps.exif_transpose(im).convert("RGB")
    assert shown.size == ((200, 320) if tag in (6, 8) else (320, 200))
    r, g, b = shown.getpixel((shown.width // 2, 2))  # the red bar is on top once orientation is applied
    assert r > 180 and g < 80 and b < 80


def test_bomb_header_claims_20000_square(fx: dict[str, Path]) -> None:
    data = (fx["images"] / "bomb.png").read_bytes()
    assert len(data) < 100_000
    assert data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (20000, 20000) and w * h > MAX_PIXELS
    with pytest.raises(Image.DecompressionBombError):
        Image.open(fx["images"] / "bomb.png")


def test_symlinks(fx: dict[str, Path], expected: dict) -> None:
    if not expected["symlinks"]:
        pytest.skip("this file system refuses symlinks; the symlink records are left out")
    img = fx["images"]
    assert (img / "escape.jpg").is_symlink()
    assert not (img / "escape.jpg").resolve().is_relative_to(img.resolve())
    assert (img / "alias.jpg").resolve().is_relative_to(img.resolve())


def test_image_statuses_agree_with_pillow(fx: dict[str, Path], expected: dict) -> None:
    """Each image's declared status, re-derived independently with Pillow."""
    root = fx["images"].resolve()
    for rel, info in expected["images"].items():
        p = fx["images"] / rel
        if not p.resolve().is_relative_to(root):
            got = "unsafe_path"
        elif not p.is_file():
            got = "missing_image"
        else:
            try:
                with Image.open(p) as im:
                    im.load()
                    w, h = ImageOps.exif_transpose(im).size
            except (OSError, Image.DecompressionBombError):
                got = "unreadable_image"
            else:
                assert [w, h] == info["displayed"], rel
                got = "image_too_small" if min(w, h) < 28 else "bad_aspect_ratio" if max(w, h) / min(w, h) > 200 else "ok"
        assert got == info["status"], rel


def _load_records(path: Path) -> list:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return json.loads(path.read_text(encoding="utf-8"))


def test_expected_covers_every_record(fx: dict[str, Path], expected: dict) -> None:
    root = fx["root"]
    for name in ("llava/llava.json", "llava/llava.jsonl", "messages/messages.json"):
        recs = _load_records(root / name)
        outcomes = expected[name]
        assert list(outcomes) == [str(i) for i in range(len(recs))], name
        assert set(outcomes.values()) <= REASONS | {"ok"}
        ok = [k for k, v in outcomes.items() if v == "ok"]
        assert list(expected["ids"][name]) == ok
        ids = list(expected["ids"][name].values())
        assert len(ids) == len(set(ids)) and all(isinstance(i, str) for i in ids)
        for k, out in expected["outputs"][name].items():
            assert out["id"] == expected["ids"][name][k]
    coco = json.loads((root / "coco/captions.json").read_text())
    exp = expected["coco/captions.json"]
    assert list(exp["images"]) == [str(i) for i in range(len(coco["images"]))]
    listed = {im["id"] for im in coco["images"] if "id" in im}
    orphans = [a["id"] for a in coco["annotations"] if a.get("image_id") not in listed]
    assert sorted(orphans) == exp["orphans"]
    for k, why in exp["annotations"].items():
        a = coco["annotations"][int(k)]
        assert why == ("orphan_annotation" if a["id"] in orphans else "malformed")


def test_every_reason_is_exercised(expected: dict) -> None:
    llava = set(expected["llava/llava.json"].values())
    assert REASONS <= llava
    coco = set(expected["coco/captions.json"]["images"].values())
    assert {"ok", "no_caption", "duplicate_id", "missing_image", "unreadable_image", "image_too_small",
            "bad_aspect_ratio", "unsafe_path", "malformed"} <= coco


def test_json_and_jsonl_hold_the_same_records(fx: dict[str, Path]) -> None:
    assert _load_records(fx["llava_json"]) == _load_records(fx["llava_jsonl"])


def test_llava_dirt_present(fx: dict[str, Path]) -> None:
    recs = _load_records(fx["llava_json"])
    dicts = [r for r in recs if isinstance(r, dict)]
    assert {type(r) for r in recs if not isinstance(r, dict)} == {str, list, type(None)}
    assert any(r.get("id") == "coco.v1.000123" for r in dicts)
    assert any(isinstance(r.get("id"), int) and not isinstance(r.get("id"), bool) for r in dicts)
    assert any("id" not in r for r in dicts)
    assert any(isinstance(r.get("image"), list) and len(r["image"]) == 2 for r in dicts)
    roles = {t.get("from") for r in dicts for t in r.get("conversations", []) if isinstance(t, dict)}
    assert {"human", "gpt", "user", "assistant", "system", None} <= roles
    paths = {r.get("image") for r in dicts if isinstance(r.get("image"), str)}
    assert any(p.startswith("/") for p in paths) and any(".." in Path(p).parts for p in paths)
    assert sum(r.get("image") == "photo_000.jpg" for r in dicts) >= 5


def test_coco_dirt_present(fx: dict[str, Path]) -> None:
    coco = json.loads(fx["coco"].read_text())
    assert {"info", "licenses", "images", "annotations"} <= coco.keys()
    names = [im.get("file_name") for im in coco["images"]]
    assert len(names) != len(set(names))  # a file listed twice
    ann_ids = [a["id"] for a in coco["annotations"]]
    assert ann_ids != sorted(ann_ids)
    caps = [a["caption"] for a in coco["annotations"] if isinstance(a["caption"], str)]
    assert "  A dog. " in caps and "A cat\n on a mat.\n" in caps and "" in caps


# --- big clean sets ----------------------------------------------------------------------------

def _check_clean_llava(rec: dict, images: Path | None) -> None:
    """The invariants of a clean record (CONTRACT s.1), checked directly."""
    assert isinstance(rec["id"], str)
    conv = rec["conversations"]
    assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) >= 2
    assert all(t["value"] == t["value"].strip() and t["value"] for t in conv)
    im = rec.get("image")
    n_img = 0 if im is None else 1 if isinstance(im, str) else len(im)
    assert sum(t["value"].count("<image>") for t in conv if t["from"] == "human") == n_img
    assert not any("<image>" in t["value"] for t in conv if t["from"] == "gpt")
    if images is not None and im is not None:
        for p in [im] if isinstance(im, str) else im:
            assert (images / p).is_file(), p


def test_llava_scale_is_clean_deterministic_and_reuses_images(tmp_path: Path) -> None:
    from fixtures.generate import generate_llava_scale

    a = generate_llava_scale(tmp_path / "a", n_records=3000, n_images=60, seed=3)
    b = generate_llava_scale(tmp_path / "b", n_records=3000, n_images=60, seed=3)
    assert _tree_digest(a["root"]) == _tree_digest(b["root"])
    recs = json.loads(a["llava_json"].read_text())
    assert recs == _load_records(a["llava_jsonl"])
    assert len(recs) == 3000 and len({r["id"] for r in recs}) == 3000
    for r in recs:
        _check_clean_llava(r, a["images"])
    with_img = [r["image"] for r in recs if "image" in r]
    assert 0 < len(recs) - len(with_img) < 300  # ~5 % text-only
    assert len(set(with_img)) <= 60 and len(with_img) / len(set(with_img)) > 20  # heavy reuse
    rounds = {len(r["conversations"]) // 2 for r in recs}
    assert rounds == {1, 2, 3, 4, 5}
    words = [len(t["value"].split()) for r in recs for t in r["conversations"] if t["from"] == "gpt"]
    assert min(words) >= 20 and max(words) <= 300
    with Image.open(a["images"] / with_img[0]) as im:
        assert im.size == (64, 64) and im.format == "JPEG"


def test_text_only_json_and_jsonl_agree(tmp_path: Path) -> None:
    from fixtures.generate import write_llava_scale_text_only

    out = write_llava_scale_text_only(tmp_path, 20_001)  # crosses a 20k chunk boundary
    lines = out["json"].read_text().splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 20_003  # one record a line
    recs = json.loads(out["json"].read_text())
    assert recs == _load_records(out["jsonl"])
    assert len({r["id"] for r in recs}) == 20_001
    for r in recs[:2000]:
        assert "image" not in r
        _check_clean_llava(r, None)


def test_size_mix(tmp_path: Path) -> None:
    from fixtures.generate import generate_size_mix

    a = generate_size_mix(tmp_path / "a", n=8, seed=1)
    b = generate_size_mix(tmp_path / "b", n=8, seed=1)
    assert _tree_digest(a["root"]) == _tree_digest(b["root"])
    mp = []
    for p in sorted(a["images"].iterdir()):
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            mp.append(im.width * im.height / 1e6)
    mp.sort()
    assert len(mp) == 8 and mp[3] < 0.4 and 1 <= mp[4] <= mp[5] <= 4 and 8 <= mp[6] <= mp[7] <= 12
    recs = json.loads(a["records"].read_text())
    for r in recs:
        _check_clean_llava(r, a["images"])
    used = {r["image"] for r in recs if isinstance(r.get("image"), str)}
    assert used == {p.name for p in a["images"].iterdir()}
    assert any(isinstance(r.get("image"), list) for r in recs) and any("image" not in r for r in recs)
