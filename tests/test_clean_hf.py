"""`mmdata clean hf`: real parquet files written with pyarrow in the LLaVA-OneVision-Data and the_cauldron
layouts (images embedded as bytes): exact records, the content-addressed images store, the reject
codes, byte-identical reruns, and `shard --images OUT.images` on the result."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmdata.clean import clean_hf
from mmdata.errors import InputError

HERE = Path(__file__).resolve().parents[1]
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
ONEVISION = pa.schema([("id", pa.string()), ("image", IMAGE),
                       ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
                       ("data_source", pa.string())])
CAULDRON = pa.schema([("images", pa.list_(IMAGE)),
                      ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()),
                                                    ("source", pa.string())])))])


def jpeg(w: int, h: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 10)).save(buf, "PNG")
    return buf.getvalue()


def name(data: bytes, ext: str) -> str:
    d = hashlib.sha256(data).hexdigest()
    return f"{d[:2]}/{d}.{ext}"


def conv(q: str, a: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


RED, GREEN = jpeg(64, 48), png(40, 40)


def onevision_rows() -> list[dict]:
    return [
        {"id": "a", "image": {"bytes": RED, "path": "a.jpg"}, "conversations": conv("<image>\nColour?", "Red."),
         "data_source": "toy"},
        {"id": "t", "image": None, "conversations": conv("Hi", "Hello."), "data_source": "toy"},
        {"id": "b", "image": {"bytes": RED[:300], "path": "b.jpg"}, "conversations": conv("<image>\nWhat?", "Cut."),
         "data_source": "toy"},
        {"id": "s", "image": {"bytes": jpeg(10, 10), "path": "s.jpg"}, "conversations": conv("<image>\nTiny?", "Yes."),
         "data_source": "toy"},
        {"id": "a", "image": {"bytes": GREEN, "path": "g.png"}, "conversations": conv("<image>\nAgain?", "Green."),
         "data_source": "toy"},
        {"id": "r", "image": {"bytes": RED, "path": "a2.jpg"}, "conversations": conv("<image>\nSame file?", "Yes."),
         "data_source": "toy"},
        {"id": "p", "image": {"bytes": None, "path": "coco/1.jpg"}, "conversations": conv("<image>\nNo bytes", "x"),
         "data_source": "toy"},
    ]


def write(path: Path, rows: list[dict], schema: pa.Schema, row_group: int = 3) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group)
    return path


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_onevision_layout(tmp_path: Path) -> None:
    src = write(tmp_path / "ov.parquet", onevision_rows(), ONEVISION)
    out = tmp_path / "out" / "clean.jsonl"
    rep = clean_hf(src, out, workers=1, rows=2)
    store = tmp_path / "out" / "clean.images"
    red, green = name(RED, "jpg"), name(GREEN, "png")
    assert _lines(out) == [
        {"id": "a", "image": red, "conversations": conv("<image>\nColour?", "Red."), "data_source": "toy"},
        {"id": "t", "conversations": conv("Hi", "Hello."), "data_source": "toy"},
        {"id": "r", "image": red, "conversations": conv("<image>\nSame file?", "Yes."), "data_source": "toy"},
    ]
    rej = _lines(Path(rep.rejects))
    assert [(r["index"], r["id"], r["reason"]) for r in rej] == [
        (2, "b", "unreadable_image"), (3, "s", "image_too_small"), (4, "a", "duplicate_id"), (6, "p", "missing_image")]
    assert rej[0]["record"]["image"] == name(RED[:300], "jpg") and "coco/1.jpg" in rej[3]["detail"]
    assert (store / red).read_bytes() == RED and (store / green).read_bytes() == GREEN
    assert rep.images_checked == 5 and rep.extra["images_in_store"] == 4
    assert (rep.input, rep.written, rep.rejected) == (7, 3, 4)
    assert json.loads(Path(rep.report).read_text())["options"]["layout"] == "llava-onevision"
    assert not list(store.rglob(".tmp-*"))


def test_rerun_and_batch_size_give_the_same_bytes(tmp_path: Path) -> None:
    src = write(tmp_path / "ov.parquet", onevision_rows(), ONEVISION)
    outs = []
    for k, (rows, workers) in enumerate([(2, 1), (1000, 2), (2, 1)]):
        out = tmp_path / f"run{k}" / "c.json"
        rep = clean_hf(src, out, workers=workers, rows=rows, images_store=tmp_path / "store")
        outs.append((out.read_bytes(), Path(rep.rejects).read_bytes(), Path(rep.report).read_bytes()))
    assert outs[0] == outs[1] == outs[2]
    assert sorted(p.relative_to(tmp_path / "store").as_posix() for p in (tmp_path / "store").rglob("*.*")) == sorted(
        [name(RED, "jpg"), name(GREEN, "png"), name(RED[:300], "jpg"), name(jpeg(10, 10), "jpg")])


def test_cauldron_layout_folder_of_files(tmp_path: Path) -> None:
    """A folder of parquet files, in name order; texts become human/gpt pairs, images go first."""
    rows1 = [{"images": [{"bytes": RED, "path": None}],
              "texts": [{"user": "What colour?", "assistant": "Red.", "source": "toy"},
                        {"user": "Sure?", "assistant": "Yes.", "source": "toy"}]},
             {"images": [{"bytes": RED, "path": None}, {"bytes": GREEN, "path": None}],
              "texts": [{"user": "Compare <image> and <image>.", "assistant": "Red, green.", "source": "toy"}]}]
    rows2 = [{"images": [], "texts": [{"user": "Text only?", "assistant": "Yes.", "source": None}]},
             {"images": [{"bytes": GREEN, "path": None}], "texts": [{"user": "Q", "assistant": " ", "source": "toy"}]}]
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "train-00001.parquet", rows2, CAULDRON)
    write(tmp_path / "data" / "train-00000.parquet", rows1, CAULDRON)
    out = tmp_path / "c.json"
    rep = clean_hf(tmp_path / "data", out, workers=1, out_format="llava")
    red, green = name(RED, "jpg"), name(GREEN, "png")
    assert json.loads(out.read_text()) == [
        {"id": "data-0", "image": red,
         "conversations": conv("<image>\nWhat colour?", "Red.") + conv("Sure?", "Yes."), "source": "toy"},
        {"id": "data-1", "image": [red, green], "conversations": conv("Compare <image> and <image>.", "Red, green."),
         "source": "toy"},
        {"id": "data-2", "conversations": conv("Text only?", "Yes.")},
    ]
    assert [(r["id"], r["reason"]) for r in _lines(Path(rep.rejects))] == [("data-3", "empty_turn")]
    assert rep.extra["files"] == ["train-00000.parquet", "train-00001.parquet"]
    assert rep.options["layout"] == "the_cauldron"


def test_bad_inputs_are_one_line(tmp_path: Path) -> None:
    write(tmp_path / "x.parquet", [{"a": 1}], pa.schema([("a", pa.int64())]))
    with pytest.raises(InputError, match="not a known parquet layout.*found a"):
        clean_hf(tmp_path / "x.parquet", tmp_path / "o.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .parquet files"):
        clean_hf(tmp_path / "empty", tmp_path / "o.json")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable parquet file"):
        clean_hf(tmp_path / "junk.parquet", tmp_path / "o.json")
    p = subprocess.run([sys.executable, "-m", "mmdata.cli", "clean", "hf", str(tmp_path / "nope"), "--out",
                        str(tmp_path / "o.json")], cwd=HERE, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "no such file or folder" in p.stderr


def test_shard_reads_the_store(tmp_path: Path) -> None:
    """`mmdata clean hf` then `mmdata shard OUT --images OUT.images`: no folder for the user to manage."""
    src = write(tmp_path / "ov.parquet", onevision_rows()[:2], ONEVISION)
    cli = [sys.executable, "-m", "mmdata.cli"]
    p = subprocess.run([*cli, "clean", "hf", str(src), "--out", str(tmp_path / "c.jsonl"), "-q", "--rekey"],
                       cwd=HERE, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*cli, "shard", str(tmp_path / "c.jsonl"), "--images", str(tmp_path / "c.images"),
                        "--out", str(tmp_path / "shards"), "--workers", "1"],
                       cwd=HERE, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert (manifest["samples"], manifest["rejected"], manifest["images"]) == (2, 0, 1)
