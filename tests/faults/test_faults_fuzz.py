"""Fuzzed records with hypothesis (deterministic: derandomize=True, no example database written):
`mmdata.records.normalize` / `validate_record` only ever return their documented results, and `clean`
on fuzzed or byte-mangled JSON Lines never raises anything but InputError and accounts for every
record (written + rejected == input). A last case runs a fuzzed file through the real commands."""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import pytest
from conftest import LARGE, SEED

import faultkit as fk

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mmdata.errors import InputError  # noqa: E402
from mmdata.records import REASONS, normalize, validate_record  # noqa: E402

EXAMPLES = int(os.environ.get("MMDATA_FAULTS_EXAMPLES", "2000" if LARGE else "150"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FILE_FUZZ = settings(FUZZ, max_examples=max(10, EXAMPLES // 5))

# ---------------------------------------------------------------------------------------------
# strategies: JSON values, and records that look almost right

TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\n", "<image>", "<image>\n", " <image> ", "<image><image>", "\t\r\n", "\x00",
                     "ok", "What is it?", "\ufeff", "\ud7ff", "<image>\nQ?"]),
    st.lists(st.sampled_from(["<image>", "a", " ", "\n", "é", "<", "image>"]), max_size=6).map("".join),
)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), TEXT)
JSON = st.recursive(SCALAR, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                    st.dictionaries(TEXT, kids, max_size=4)), max_leaves=20)
ROLE = st.one_of(st.sampled_from(["human", "gpt", "user", "assistant", "system", "bot", "Human", ""]), JSON)
PATH = st.one_of(st.sampled_from(["photo_000.jpg", "photo_001.jpg", "grey.jpg", "missing_001.jpg", "../x.jpg",
                                  "/etc/passwd", "", "folder.jpg", "tiny_20x20.jpg", "truncated.jpg",
                                  "sub/photo_s0.jpg"]),
                 TEXT)
IMAGE = st.one_of(st.none(), PATH, st.lists(PATH, max_size=3), JSON)
ID = st.one_of(st.none(), TEXT, st.integers(-5, 5), st.integers(), JSON)


def turns(role_key: str, value_key: str) -> st.SearchStrategy:
    turn = st.one_of(st.fixed_dictionaries({role_key: ROLE, value_key: st.one_of(TEXT, JSON)}),
                     st.builds(lambda i, q, a: [{role_key: "human", value_key: q}, {role_key: "gpt", value_key: a}][i],
                               st.integers(0, 1), TEXT, TEXT),
                     JSON)
    return st.one_of(st.lists(turn, max_size=6), JSON)


def _record(keys: dict) -> dict:
    return {k: v for k, v in keys.items() if v is not _ABSENT}


_ABSENT = object()
LLAVA = st.builds(lambda i, im, c, extra: _record({"id": i, "image": im, "conversations": c, **extra}),
                  st.one_of(ID, st.just(_ABSENT)), st.one_of(IMAGE, st.just(_ABSENT)),
                  st.one_of(turns("from", "value"), st.just(_ABSENT)), st.dictionaries(TEXT, JSON, max_size=2))
MESSAGES = st.builds(lambda i, im, m: _record({"id": i, "images": im, "messages": m}),
                     st.one_of(ID, st.just(_ABSENT)), st.one_of(IMAGE, st.just(_ABSENT)), turns("role", "content"))
INSTRUCTION = st.builds(lambda a, b, c, im: _record({"instruction": a, "input": b, "output": c, "image": im}),
                        st.one_of(TEXT, JSON), st.one_of(TEXT, JSON, st.just(_ABSENT)), st.one_of(TEXT, JSON),
                        st.one_of(IMAGE, st.just(_ABSENT)))
# Records almost right: a valid one with one field replaced by something hostile.
VALID = st.builds(lambda q, a, n: {"id": f"v{n}", "image": "photo_000.jpg",
                                   "conversations": [{"from": "human", "value": "<image>\n" + q},
                                                     {"from": "gpt", "value": a}]},
                  TEXT, TEXT, st.integers(0, 10))
MUTATED = st.builds(lambda r, k, v: {**r, k: v}, VALID, st.sampled_from(["id", "image", "conversations", "x"]), JSON)
RECORD = st.one_of(LLAVA, MESSAGES, INSTRUCTION, VALID, MUTATED, JSON)


# ---------------------------------------------------------------------------------------------
# the record functions


@FUZZ
@given(RECORD, st.sampled_from(["auto", "llava", "messages"]))
def test_normalize_returns_a_documented_result_and_a_valid_record(raw, shape):
    fk.TALLY["fuzz_cases"] += 1
    before = copy.deepcopy(raw)
    res = normalize(raw, "f-0", shape)
    assert raw == before or raw != raw, "normalize changed its input"  # (a NaN never equals itself)
    assert isinstance(res.id, str) and isinstance(res.detail, str)
    if res.code is not None:
        assert res.code in REASONS and res.record is None and res.detail
        return
    rec = res.record
    assert isinstance(rec, dict) and rec["id"] == res.id and res.id.strip()
    # What normalize lets through is a record of CONTRACT s.1 on its face (image paths are clean's job).
    assert [c for c, _ in validate_record(rec) if c != "unsafe_path"] == []
    again = normalize(rec, "other", "llava")  # and it is a fixed point
    assert again.code is None and again.record == rec


@FUZZ
@given(st.one_of(RECORD, JSON))
def test_validate_record_only_returns_problems(rec):
    fk.TALLY["fuzz_cases"] += 1
    problems = validate_record(rec)
    assert isinstance(problems, list)
    for code, detail in problems:
        assert code in REASONS and isinstance(detail, str) and detail


# ---------------------------------------------------------------------------------------------
# clean on fuzzed files (in process: hundreds of files in seconds)


def _dumps(rec: object) -> bytes:
    return json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _records_in(data: bytes) -> int:
    """How many records clean should see: a file that is one JSON array is an array of records
    (whatever its name), anything else is JSON Lines, a record per non-blank line."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if isinstance(doc, list):
        return len(doc)
    return len([x for x in data.split(b"\n") if x.strip()])


def _clean_file(dirty: dict, tmp: Path, data: bytes) -> None:
    """Run clean on ``data``: InputError (exit 2) naming the input, or every record accounted for."""
    from mmdata.clean import clean_llava

    n = _records_in(data)

    inp, out = tmp / "in.jsonl", tmp / "out.jsonl"
    inp.write_bytes(data)
    for p in tmp.glob("out*"):
        p.unlink()
    try:
        report = clean_llava(inp, dirty["images"], out, workers=1)
    except InputError as e:
        assert str(e).startswith(str(inp)), f"the error does not name the input: {e}"
        assert not out.exists(), "a refused run left an output"
        return
    assert report.input == n and report.written + report.rejected == n, (report.input, report.written, report.rejected)
    written = [json.loads(x) for x in out.read_bytes().splitlines() if x.strip()]
    assert len(written) == report.written
    for rec in written:
        assert validate_record(rec) == [], rec
    assert fk.strays(tmp) == []


@FILE_FUZZ
@given(st.lists(RECORD, min_size=1, max_size=12))
def test_clean_on_fuzzed_records_accounts_for_every_one(dirty, tmp_path_factory, records):
    fk.TALLY["fuzz_cases"] += 1
    data = b"".join(_dumps(r) + b"\n" for r in records)
    _clean_file(dirty, tmp_path_factory.mktemp("fz"), data)


def _mangle(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, i = rng.randrange(4), rng.randrange(max(1, len(b)))
        if op == 0 and b:
            b[i] = rng.randrange(256)
        elif op == 1:
            b[i:i] = rng.choice([b"\xff", b"\xef\xbb\xbf", b"\x00", b"\n", b"{", b"\"", b"\\u", b"\xed\xa0\x80"])
        elif op == 2:
            del b[i:i + rng.randint(1, 8)]
        else:
            b = b[:i]
    return bytes(b)


@FILE_FUZZ
@given(st.lists(VALID, min_size=1, max_size=8), st.integers(0, 2**32))
def test_clean_on_byte_mangled_json_lines_never_raises_anything_else(dirty, tmp_path_factory, records, seed):
    fk.TALLY["fuzz_cases"] += 1
    for i, r in enumerate(records):
        r["id"] = f"m{i}"
    data = _mangle(b"".join(_dumps(r) + b"\n" for r in records), random.Random(seed))
    _clean_file(dirty, tmp_path_factory.mktemp("mg"), data)


# ---------------------------------------------------------------------------------------------
# the real commands on one fuzzed file


def test_the_commands_on_a_fuzzed_file_never_traceback(dirty, tmp_path):
    """300 seeded records from the strategies above, through `mmdata clean` then `mmdata shard`."""
    rng = random.Random(SEED)
    records = [_seeded_record(rng) for _ in range(300)]
    inp = tmp_path / "fuzz.jsonl"
    inp.write_bytes(b"".join(_dumps(r) + b"\n" for r in records))
    out = tmp_path / "out.jsonl"
    r = fk.mmdata("clean", "llava", inp, "--images", dirty["images"], "--out", out, "--workers", "2", "-q")
    assert r.rc == 0 and "Traceback" not in r.stderr, r.explain()
    rep = json.loads((tmp_path / "out.report.json").read_text())
    assert rep["input"] == 300 and rep["written"] + rep["rejected"] == 300, rep
    assert rep["written"] > 0 and rep["rejected"] > 0, rep
    s = fk.mmdata("shard", out, "--images", dirty["images"], "--out", tmp_path / "s", "--max-res", "224",
                  "--workers", "2", "-q")
    assert s.rc == 0 and "Traceback" not in s.stderr, s.explain()
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["samples"] + m["rejected"] == rep["written"]


def _seeded_record(rng: random.Random) -> object:
    """A record in the spirit of RECORD, drawn from a seeded Random (hypothesis' .example() is not)."""
    texts = ["", " ", "<image>", "<image>\nWhat is it?", "Hi.", "\x00", "é", "<image><image>", "A cat."]
    paths = ["photo_000.jpg", "photo_001.jpg", "grey.jpg", "missing_001.jpg", "../x.jpg", "/etc/passwd", "",
             "folder.jpg", "tiny_20x20.jpg", "truncated.jpg", "sub/photo_s0.jpg", "exif_rot6.jpg"]
    roles = ["human", "gpt", "user", "assistant", "system", "bot", 3, None]
    kind = rng.randrange(5)
    if kind == 4:
        return rng.choice([None, 1, "x", [], {}, [{"from": "human"}]])
    turns = []
    for k in range(rng.randint(0, 5)):
        role = ("human", "gpt")[k % 2] if rng.random() < 0.8 else rng.choice(roles)
        turns.append({"from": role, "value": rng.choice(texts) if rng.random() < 0.9 else rng.choice([None, 1, []])})
    rec: dict = {"conversations": turns}
    if rng.random() < 0.8:
        rec["id"] = rng.choice([f"i{rng.randrange(400)}", rng.randrange(400), "", None])
    if rng.random() < 0.7:
        several = [rng.choice(paths) for _ in range(rng.randint(0, 3))]
        rec["image"] = rng.choice(paths) if rng.random() < 0.8 else several
    if kind == 3:
        rec = {"id": rec.get("id"), "messages": [{"role": t["from"], "content": t["value"]} for t in turns],
               "images": rec.get("image", [])}
    return rec
