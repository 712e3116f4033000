"""mmdata.io: streaming JSON arrays / JSON Lines with file:line:col errors, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmdata import io as mio
from mmdata.errors import InputError


def _records(path: Path) -> list:
    return [r for _, _, r in mio.iter_json_records(path)]


def test_array_and_lines_give_the_same_records(tmp_path: Path) -> None:
    recs = [{"id": i, "t": "é\n" * i, "x": [1.5, None, True]} for i in range(50)] + ["s", 3, None]
    (tmp_path / "a.json").write_text(json.dumps(recs, indent=2, ensure_ascii=False))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    assert _records(tmp_path / "a.json") == recs == _records(tmp_path / "a.jsonl")
    idx = [(i, line) for i, line, _ in mio.iter_json_records(tmp_path / "a.jsonl")]
    assert idx[:3] == [(0, 1), (1, 2), (2, 3)]


def test_array_streams_across_chunk_boundaries(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mio, "_CHUNK", 7)
    recs = [{"id": f"r{i}", "v": 12345678901 * i, "s": "x" * (i % 13)} for i in range(200)]
    (tmp_path / "a.json").write_text("\ufeff" + json.dumps(recs))
    assert _records(tmp_path / "a.json") == recs


def test_jsonl_content_detected_whatever_the_name(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"a": 1}\n{"a": 2}\n')
    assert _records(tmp_path / "a.json") == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("text, line, col", [
    ('[\n {"a": 1},\n {"a": 2,}\n]', 3, 10),
    ('[\n {"a": 1}\n {"a": 2}\n]', 3, 2),
    ('[{"a": 1},]', 1, 11),
    ('[{"a": 1}] x', 1, 12),
    ('[{"a": 1}', 1, 10),
])
def test_array_errors_name_line_and_column(tmp_path: Path, text: str, line: int, col: int) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        _records(p)
    assert (e.value.line, e.value.col) == (line, col)
    assert str(e.value).startswith(f"{p}:{line}:{col}: invalid JSON")


def test_jsonl_error_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n\n{"a": }\n')
    with pytest.raises(InputError) as e:
        _records(p)
    assert e.value.line == 3 and e.value.col is not None


@pytest.mark.parametrize("setup, needle", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_text("  \n"), "empty file"),
])
def test_unusable_files(tmp_path: Path, setup, needle: str) -> None:
    p = tmp_path / "x.json"
    setup(p)
    with pytest.raises(InputError, match=needle):
        _records(p)


def test_read_json_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text('{\n  "a": [1,\n  2,,]\n}')
    with pytest.raises(InputError) as e:
        mio.read_json(p)
    assert e.value.line == 3
    with pytest.raises(InputError, match="no such file"):
        mio.read_json(tmp_path / "none.json")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    p = tmp_path / "o.json"
    p.write_text("old")
    with pytest.raises(RuntimeError), mio.atomic_write(p) as f:
        f.write(b"new half")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["o.json"]


@pytest.mark.parametrize("name", ["o.json", "o.jsonl"])
def test_record_writer_round_trip(tmp_path: Path, name: str) -> None:
    recs = [{"id": str(i), "v": "ü"} for i in range(3)]
    with mio.RecordWriter(tmp_path / name) as w:
        w.write_many(recs)
    assert _records(tmp_path / name) == recs
    with mio.RecordWriter(tmp_path / ("e" + name)):
        pass
    assert (tmp_path / ("e" + name)).read_bytes() == (b"[]\n" if name.endswith(".json") else b"")


@pytest.mark.parametrize("text, line, col", [
    ('{"id": \n', 1, 8),  # truncated: just past the last character, not column 1
    ('{"a": 1}\n{"é": 1, x}\n', 2, 10),  # a character column, not a byte column
    ('{"é": "ü", }\r\n', 1, 10),  # orjson points at the trailing comma
])
def test_jsonl_error_column(tmp_path: Path, text: str, line: int, col: int) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(text.encode())
    with pytest.raises(InputError) as e:
        _records(p)
    assert (e.value.line, e.value.col) == (line, col), str(e.value)


@pytest.mark.parametrize("name, data, line, col", [
    ("bad.jsonl", b'{"a": 1}\n{"a": "\xc3\xa9\xff"}\n', 2, 9),
    ("bad.json", b'[\n {"a": 1},\n {"a": "\xc3\xa9\xff"}\n]\n', 3, 10),
])
def test_invalid_utf8_names_line_and_column(tmp_path: Path, name: str, data: bytes, line: int, col: int) -> None:
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(InputError) as e:
        _records(p)
    assert (e.value.line, e.value.col) == (line, col) and "not UTF-8 text: invalid byte 0xff" in str(e.value)


def test_atomic_write_os_errors_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="cannot write") as e, mio.atomic_write(tmp_path / "f" / "o.json") as f:
        f.write(b"never")
    assert isinstance(e.value, OSError)  # callers that treat an unwritable cache as a miss still can
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="cannot write"), mio.atomic_write(tmp_path / "d") as f:
        f.write(b"never")
    assert list((tmp_path / "d").iterdir()) == []


@pytest.mark.parametrize("target, needle", [
    ("d", "is a directory"), ("f/o.json", "is not a directory"), ("in.json", "would overwrite the input"),
    ("/proc/mmdata-no/o.json", "cannot write in /proc"),
])
def test_check_output_path(tmp_path: Path, target: str, needle: str) -> None:
    if target.startswith("/proc") and not Path("/proc/self").exists():
        pytest.skip("no /proc on this system")
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    (tmp_path / "in.json").write_text("[]")
    with pytest.raises(InputError, match=needle):
        mio.check_output_path(tmp_path / target, (tmp_path / "in.json",))
    assert mio.check_output_path(tmp_path / "new" / "deeper" / "o.json") == tmp_path / "new" / "deeper" / "o.json"
    assert not (tmp_path / "new").exists() and sorted(x.name for x in tmp_path.iterdir()) == ["d", "f", "in.json"]
