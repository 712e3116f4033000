"""The fast record splitter agrees with the exact reader on every valid input, chunk boundaries
included, and refuses (NotFast) what it cannot vouch for; clean gives the same bytes either way."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from mmdata.clean import clean_llava, fastread
from mmdata.clean.fastread import NotFast, iter_raw_batches
from mmdata.io import iter_json_records

TRICKY = [
    {"id": "a", "v": 'quote " inside, and [brackets] {braces}, commas'},
    {"id": "b", "v": "backslash at the end \\"},
    {"id": "c", "v": "two backslashes then quote \\\\\" and more \\\\"},
    {"id": "d", "v": "\\\\\\\" odd run"},
    {"id": "e", "nested": [{"x": [1, 2, {"y": "]"}]}, []], "u": "é ✓ \u2028 🐱"},
    "just a string, with ] and ,",
    [1, [2, [3]]],
    None, 0, -1.5e10, True,
    {"id": "f", "empty": {}, "list": [], "s": ""},
]


def _pieces(path: Path, batch: int = 3) -> list:
    return [orjson.loads(p) for b in iter_raw_batches(path, batch) for p in b]


def _exact(path: Path) -> list:
    return [r for _, _, r in iter_json_records(path)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_array_split_matches_exact_reader(tmp_path: Path, monkeypatch, chunk: int, indent: int | None) -> None:
    monkeypatch.setattr(fastread, "_CHUNK", chunk)
    p = tmp_path / "a.json"
    p.write_text(json.dumps(TRICKY * 3, indent=indent, ensure_ascii=False))
    assert _pieces(p) == _exact(p) == TRICKY * 3


@pytest.mark.parametrize("block", [1, 5, 64, 1 << 20])
def test_lines_split_matches_exact_reader(tmp_path: Path, monkeypatch, block: int) -> None:
    monkeypatch.setattr(fastread, "_LINE_BLOCK", block)
    p = tmp_path / "a.jsonl"
    p.write_text("\n\n".join(json.dumps(r) for r in TRICKY) + "\r\n\n")
    assert _pieces(p) == _exact(p) == TRICKY
    p.write_text("\n".join(json.dumps(r) for r in TRICKY))  # no newline at the end
    assert _pieces(p) == _exact(p) == TRICKY


def test_white_space_lines_take_the_exact_path_with_the_same_result(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    recs = [{"conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": "A."}]} for i in range(3)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "b.jsonl").write_text(json.dumps(recs[0]) + "\r\n  \n\t\n" + "".join(json.dumps(r) + "\n" for r in recs[1:]))
    clean_llava(tmp_path / "a.jsonl", tmp_path / "img", tmp_path / "a_out.jsonl", workers=1)
    rep = clean_llava(tmp_path / "b.jsonl", tmp_path / "img", tmp_path / "b_out.jsonl", workers=1)
    assert rep.input == 3
    assert (tmp_path / "a_out.jsonl").read_bytes().replace(b"a-", b"b-") == (tmp_path / "b_out.jsonl").read_bytes()


@pytest.mark.parametrize("text", ["[]", " \n[ ]\n", "\ufeff[]"])
def test_empty_arrays(tmp_path: Path, text: str) -> None:
    p = tmp_path / "e.json"
    p.write_text(text)
    assert _pieces(p) == []


@pytest.mark.parametrize("text", ['[{"a": 1},]', '[{"a": 1}', '[{"a": 1}] x', '[{"a": 1}}'])
def test_refuses_what_it_cannot_vouch_for(tmp_path: Path, text: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(NotFast):
        _pieces(p)


def test_orjson_refusals_fall_back_to_the_exact_reader(tmp_path: Path) -> None:
    """NaN and integers beyond 64 bits are valid for Python's json, not for orjson: same result either way."""
    (tmp_path / "img").mkdir()
    ok = {"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo."}]}
    odd = dict(ok, id="n", score=float("nan"), big=2**70,
               conversations=[{"from": "human", "value": "Hi!"}, {"from": "gpt", "value": "Yo."}])
    p = tmp_path / "in.json"
    p.write_text(json.dumps([ok, odd]))
    rep = clean_llava(p, tmp_path / "img", tmp_path / "o.jsonl", workers=1)
    assert rep.written == 2
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["big"] == 2**70 and json.loads(lines[1])["score"] is None


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 0, 2, "\t"])
def test_pretty_arrays_cut_at_their_separator(tmp_path: Path, monkeypatch, chunk: int, indent) -> None:
    """clean's splitter for pretty-printed arrays (cut where ',' + the first element's lead white space +
    '{' occurs) gives the exact reader's records; where it cannot (elements that are not objects, nested
    objects at the top indentation), clean falls back to the exact reader: the same OUT either way."""
    monkeypatch.setattr(fastread, "_CHUNK", chunk)
    recs = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"Q{i}, {{x}}\\n"},
                                              {"from": "gpt", "value": "A [1]."}], "meta": {"k": [{"a": 1}, {}]}}
            for i in range(7)]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(recs, indent=indent))
    if indent != 0:  # indent 0 puts nested objects at the top indentation: cut wrongly, parsed, refused
        pieces = [orjson.loads(x) for s in fastread.iter_spans(p, 3, parsed_after=True)
                  for x in fastread.read_pieces(str(p), s)]
        assert pieces == recs
    (tmp_path / "img").mkdir()
    out = {}
    for name, data in (("plain", recs), ("mixed", [*recs[:3], "a string", [1, {"b": 2}], *recs[3:]])):
        src = tmp_path / f"{name}.json"
        src.write_text(json.dumps(data, indent=indent))
        clean_llava(src, tmp_path / "img", tmp_path / f"{name}.out.jsonl", workers=1)
        out[name] = (tmp_path / f"{name}.out.jsonl").read_bytes()
        exact = [r for _, _, r in iter_json_records(src)]
        assert len(exact) == len(data)
    assert out["plain"] == out["mixed"] and out["plain"].count(b"\n") == 7
