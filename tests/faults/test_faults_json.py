"""Hostile JSON and hostile paths through the real commands: deeply nested and enormous values,
numbers and strings that parsers choke on, image paths that try to leave the images root or break
the file system's limits, and output names with spaces, new lines and non-ASCII. Never a traceback;
exit 0 with every record accounted for (written + rejected == input), or exit 2 with one line that
names the file (and line) to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import faultkit as fk


def conv(q: str = "Hello?", a: str = "Hi.") -> list[dict]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def clean(inp: Path, images: Path, out: Path, *extra: object) -> fk.Run:
    return fk.mmdata("clean", "llava", inp, "--images", images, "--out", out, "--workers", "1", "-q", *extra)


def accounted(r: fk.Run, out: Path, n_input: int) -> dict:
    """Exit 0, no traceback, and every input record either written or rejected (CONTRACT s.2)."""
    assert r.rc == 0 and "Traceback" not in r.stderr, r.explain()
    report = json.loads(out.with_name(out.stem + ".report.json").read_text())
    written = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    rejects = [json.loads(x) for x in out.with_name(out.stem + ".rejects.jsonl").read_text().splitlines() if x.strip()]
    assert report["input"] == n_input and report["written"] + report["rejected"] == n_input, report
    assert (len(written), len(rejects)) == (report["written"], report["rejected"])
    return {"written": written, "rejects": {r["id"]: r["reason"] for r in rejects}}


def one_bad_line(tmp_path: Path, bad: str) -> Path:
    """A JSON Lines file: a good record, the bad line, a good record."""
    p = tmp_path / "in.jsonl"
    good = [json.dumps({"id": f"g{i}", "conversations": conv(a=f"A{i}.")}) for i in range(2)]
    p.write_text(good[0] + "\n" + bad + "\n" + good[1] + "\n")
    return p


DEPTH = 100_000
BAD_LINES = {
    "nested-100k-deep": '{"id":"deep","conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"a"}],"x":'
                        + "[" * DEPTH + "]" * DEPTH + "}",
    "nested-conversation": '{"id":"deep2","conversations":' + "[" * DEPTH + "]" * DEPTH + "}",
    "5000-digit-number": '{"id":"big","conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"a"}],"n":'
                         + "9" * 5000 + "}",
    "nan": '{"id":"nan","conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"a"}],"n":NaN}',
    "lone-surrogate": '{"id":"sur","conversations":[{"from":"human","value":"q \\ud800"},{"from":"gpt","value":"a"}]}',
    "unterminated": '{"id":"cut","conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"a',
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_clean_on_a_hostile_json_line_never_tracebacks(dirty, tmp_path, kind):
    inp = one_bad_line(tmp_path, BAD_LINES[kind])
    out = tmp_path / "out.jsonl"
    r = clean(inp, dirty["images"], out)
    if r.rc == 2:
        fk.assert_user_error(r, f"{inp}:2")  # the file and the line to fix
        assert not out.exists()
    else:
        accounted(r, out, 3)


@pytest.mark.parametrize("kind", ["nested-100k-deep", "unterminated"])
def test_shard_on_a_hostile_json_line_never_tracebacks(dirty, tmp_path, kind):
    inp = one_bad_line(tmp_path, BAD_LINES[kind])
    out = tmp_path / "s"
    r = fk.mmdata("shard", inp, "--images", dirty["images"], "--out", out, "--workers", "1", "-q")
    if r.rc == 2:
        fk.assert_user_error(r, f"{inp}:2")
    else:
        assert r.rc == 0 and "Traceback" not in r.stderr, r.explain()


def test_a_failed_shard_leaves_no_journal(dirty, tmp_path):
    inp = one_bad_line(tmp_path, BAD_LINES["unterminated"])
    out = tmp_path / "s"
    r = fk.mmdata("shard", inp, "--images", dirty["images"], "--out", out, "--workers", "1", "-q")
    fk.assert_user_error(r, f"{inp}:2")
    assert fk.strays(out) == []


def test_a_record_with_100k_turns_is_accounted_for(dirty, tmp_path):
    inp = tmp_path / "in.jsonl"
    turns = [t for i in range(50_000) for t in conv(f"q{i}", f"a{i}")]
    inp.write_text(json.dumps({"id": "long", "conversations": turns}) + "\n"
                   + json.dumps({"id": "short", "conversations": conv()}) + "\n")
    accounted(clean(inp, dirty["images"], tmp_path / "out.jsonl"), tmp_path / "out.jsonl", 2)


def test_an_enormous_text_is_rejected_as_text_too_long(dirty, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "huge", "conversations": conv(a="word " * 2_400_000)}) + "\n"
                   + json.dumps({"id": "fine", "conversations": conv()}) + "\n")
    got = accounted(clean(inp, dirty["images"], tmp_path / "out.jsonl"), tmp_path / "out.jsonl", 2)
    assert got["rejects"] == {"huge": "text_too_long"}


# ---------------------------------------------------------------------------------------------
# hostile image paths: each is rejected with a reason, never read from outside --images

HOSTILE = {
    "dotdot": "../outside/secret.jpg",
    "deep-dotdot": "sub/../../outside/secret.jpg",
    "absolute": "/etc/passwd",
    "windows-drive": "C:\\Windows\\win.ini",
    "unc": "\\\\server\\share\\x.jpg",
    "backslash-dotdot": "sub\\..\\..\\outside\\secret.jpg",
    "nul": "photo_000.jpg\x00.png",
    "empty": "",
    "name-too-long": "x" * 300 + ".jpg",
    "path-too-long": "/".join(["d" * 200] * 30) + "/x.jpg",
    "symlink-escape": "escape.jpg",
    "directory": "folder.jpg",
    "newline": "photo_000.jpg\n",
    "tilde": "~/photo_000.jpg",
    "percent-dotdot": "%2e%2e/outside/secret.jpg",
}
REJECTED_AS = {"unsafe_path", "missing_image", "unreadable_image"}


def test_clean_rejects_every_hostile_image_path_with_a_reason(dirty, tmp_path):
    inp = tmp_path / "in.jsonl"
    q = conv("<image>\nWhat is it?")
    lines = [json.dumps({"id": k, "image": p, "conversations": q}) for k, p in HOSTILE.items()]
    lines.append(json.dumps({"id": "fine", "image": "photo_000.jpg", "conversations": conv("<image>\nWhat is it?")}))
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    got = accounted(clean(inp, dirty["images"], out), out, len(lines))
    assert [w["id"] for w in got["written"]] == ["fine"]
    assert set(got["rejects"]) == set(HOSTILE)
    bad = {k: v for k, v in got["rejects"].items() if v not in REJECTED_AS}
    assert not bad, bad
    for k in ("dotdot", "deep-dotdot", "absolute", "nul", "empty", "symlink-escape"):
        assert got["rejects"][k] == "unsafe_path", (k, got["rejects"][k])


def test_a_trailing_slash_image_path_is_rejected(dirty, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "slash", "image": "photo_000.jpg/", "conversations": conv("<image>\nQ?")}) + "\n")
    out = tmp_path / "out.jsonl"
    got = accounted(clean(inp, dirty["images"], out), out, 1)
    assert got["rejects"].get("slash") in REJECTED_AS, got


@pytest.fixture(scope="module")
def plain(dirty, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "out.json"
    r = clean(dirty["llava_json"], dirty["images"], out)
    assert r.rc == 0, r.explain()
    return out


@pytest.mark.parametrize("name", ["with space", "new\nline", "ünïcødé-名前", "-leading-dash", "semi;colon$(x)"])
def test_hostile_output_names_give_the_same_bytes(dirty, plain, tmp_path, name):
    hostile = tmp_path / name / f"{name}.json"
    b = clean(dirty["llava_json"], dirty["images"], hostile)
    assert b.rc == 0, b.explain()
    assert plain.read_bytes() == hostile.read_bytes()
    assert fk.strays(hostile.parent) == []


def test_shard_rejects_an_enormous_text_as_text_too_long(dirty, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "huge", "conversations": conv(a="word " * 2_400_000)}) + "\n"
                   + json.dumps({"id": "fine", "conversations": conv()}) + "\n")
    out = tmp_path / "s"
    r = fk.mmdata("shard", inp, "--images", dirty["images"], "--out", out, "--workers", "1", "-q")
    assert r.rc == 0 and "Traceback" not in r.stderr, r.explain()
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(x["id"], x["reason"]) for x in rejects] == [("huge", "text_too_long")]
    assert json.loads((out / "manifest.json").read_text())["samples"] == 1


@pytest.mark.parametrize("form", ["jsonl", "json"])
def test_a_5000_digit_number_is_one_malformed_reject_naming_its_line(dirty, tmp_path, form):
    """RFC 8259 sets no limit on a number's digits, so the file is valid JSON (CONTRACT s.2 refuses only
    invalid JSON): the one record the readers cannot represent is rejected, kept verbatim in the rejects."""
    bad = BAD_LINES["5000-digit-number"]
    good = [json.dumps({"id": f"g{i}", "conversations": conv(a=f"A{i}.")}) for i in range(2)]
    inp = tmp_path / f"in.{form}"
    inp.write_text(f"{good[0]}\n{bad}\n{good[1]}\n" if form == "jsonl" else f"[{good[0]},\n{bad},\n{good[1]}]\n")
    out = tmp_path / "out.jsonl"
    got = accounted(clean(inp, dirty["images"], out), out, 3)
    assert [w["id"] for w in got["written"]] == ["g0", "g1"] and got["rejects"] == {"big": "malformed"}
    (rej,) = [json.loads(x) for x in out.with_name("out.rejects.jsonl").read_text().splitlines()]
    assert rej["index"] == 1 and rej["detail"].startswith("line 2: holds a number of 5000 characters")
    assert rej["record"] == bad  # nothing lost: the record as it was written


def test_nan_is_invalid_json_and_refuses_the_file_naming_the_line(dirty, tmp_path):
    inp = one_bad_line(tmp_path, BAD_LINES["nan"])
    fk.assert_user_error(clean(inp, dirty["images"], tmp_path / "out.jsonl"), f"{inp}:2")
