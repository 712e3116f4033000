"""`mmdata clean` on the command line: exit codes, one-line errors naming file:line:col, default paths,
summary on stderr, --quiet."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

MMDATA = [sys.executable, "-m", "mmdata.cli"]


def run(*args: str | Path) -> subprocess.CompletedProcess:
    """`mmdata ARGS` in this process through the real entry point (fast); exit code and streams."""
    import contextlib
    import io

    from mmdata import cli

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["mmdata", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_process(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MMDATA, *map(str, args)], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "img" / "a.jpg")
    recs = [{"id": "a", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                           {"from": "gpt", "value": "Red."}]},
            {"id": "b", "image": "nope.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                              {"from": "gpt", "value": "Gone."}]}]
    (tmp_path / "in.json").write_text(json.dumps(recs, indent=1))
    return tmp_path


def test_llava_ok_default_paths_and_summary(tiny: Path) -> None:
    p = run("clean", "llava", tiny / "in.json", "--images", tiny / "img", "--out", tiny / "out" / "clean.json", "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert json.loads((tiny / "out" / "clean.json").read_text())[0]["id"] == "a"
    rej = [json.loads(x) for x in (tiny / "out" / "clean.rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rej] == [("b", "missing_image")]
    rep = json.loads((tiny / "out" / "clean.report.json").read_text())
    assert (rep["input"], rep["written"], rep["rejected"], rep["by_reason"]["missing_image"]) == (2, 1, 1, 1)
    assert "missing_image" in p.stderr and "written" in p.stderr
    assert p.stdout == ""


def test_quiet_and_explicit_paths(tiny: Path) -> None:
    p = run("clean", "llava", tiny / "in.json", "--images", tiny / "img", "--out", tiny / "o.jsonl",
            "--rejects", tiny / "r.jsonl", "--report", tiny / "rep.json", "--quiet", "--out-format", "messages")
    assert p.returncode == 0, p.stderr
    assert p.stderr == "" and p.stdout == ""
    assert json.loads((tiny / "o.jsonl").read_text())["messages"][1] == {"role": "assistant", "content": "Red."}
    assert (tiny / "r.jsonl").exists() and (tiny / "rep.json").exists()
    assert not (tiny / "o.rejects.jsonl").exists()


@pytest.mark.parametrize("content, where", [
    ('[\n  {"id": "a"},\n  {"id": "b",}\n]\n', ":3:14:"),
    ('{"id": "a"}\n{"id": "b",}\n', ":2:"),
    ('[{"id": "a"}', ":1:13:"),
])
def test_invalid_json_exit_2_with_line_and_column(tiny: Path, content: str, where: str) -> None:
    bad = tiny / ("bad.jsonl" if content.startswith("{") else "bad.json")
    bad.write_text(content)
    p = (run_process if where == ":3:14:" else run)("clean", "llava", bad, "--images", tiny / "img", "--out", tiny / "o.json")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert lines[0].startswith(f"error: {bad}{where}"), lines[0]
    assert re.match(rf"error: {re.escape(str(bad))}:\d+:\d+: invalid JSON", lines[0]), lines[0]
    assert not (tiny / "o.json").exists() and not (tiny / "o.rejects.jsonl").exists()


@pytest.mark.parametrize("args, needle", [
    (["llava", "{d}/missing.json", "--images", "{d}/img", "--out", "{d}/o.json"], "missing.json: no such file"),
    (["llava", "{d}/in.json", "--images", "{d}/noimg", "--out", "{d}/o.json"], "noimg: no such images folder"),
    (["llava", "{d}/in.json", "--images", "{d}/img", "--out", "{d}/o.txt"], "o.txt: output must end in .json"),
    (["llava", "{d}/in.json", "--images", "{d}/img", "--out", "{d}/in.json"], "would overwrite the input"),
    (["llava", "{d}/in.json", "--images", "{d}/img", "--out", "{d}/o.json", "--input-format", "csv"], "--input-format"),
    (["llava", "{d}/in.json", "--images", "{d}/img", "--out", "{d}/o.json", "--out-format", "csv"], "--out-format"),
    (["coco", "{d}/in.json", "--images", "{d}/img", "--out", "{d}/o.json"], "not a COCO captions file"),
    (["coco", "{d}/coco.json", "--images", "{d}/img", "--out", "{d}/o.json", "--prompts", "{d}/p.txt"], "p.txt:2:3: a prompt may not"),
])
def test_unusable_input_exit_2_one_line(tiny: Path, args: list[str], needle: str) -> None:
    (tiny / "coco.json").write_text(json.dumps({"images": [], "annotations": []}))
    (tiny / "p.txt").write_text("Describe it.\n  <image> what?\n")
    p = run("clean", *[a.format(d=tiny) for a in args])
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr


def test_bad_option_value_exit_2(tiny: Path) -> None:
    p = run("clean", "llava", tiny / "in.json", "--images", tiny / "img", "--out", tiny / "o.json", "--min-side", "0")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_coco_cli(tiny: Path) -> None:
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 9, "image_id": 1, "caption": " Red. "}]}
    (tiny / "coco.json").write_text(json.dumps(coco))
    (tiny / "p.txt").write_text("Describe it.\n")
    p = run("clean", "coco", tiny / "coco.json", "--images", tiny / "img", "--out", tiny / "c.json", "--prompts", tiny / "p.txt",
            "--per-caption", "-q")
    assert p.returncode == 0, p.stderr
    assert json.loads((tiny / "c.json").read_text()) == [
        {"id": "a_9", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                                          {"from": "gpt", "value": "Red."}],
         "annotation_id": 9, "width": 64, "height": 48}]


@pytest.mark.parametrize("cmd", ["llava", "coco"])
@pytest.mark.parametrize("flags, needle", [
    (["--out", "/proc/mmdata-no/o.json"], "/proc/mmdata-no/o.json: cannot write in /proc"),
    (["--out", "{d}/dir.json"], "dir.json: is a directory"),
    (["--out", "{d}/o.json", "--rejects", "{d}/dir.json"], "dir.json: is a directory"),
    (["--out", "{d}/o.json", "--report", "{d}/dir.json"], "dir.json: is a directory"),
    (["--out", "{d}/o.json", "--report", "{d}/IN"], "--report would overwrite the input"),
    (["--out", "{d}/o.json", "--rejects", "{d}/o.json"], "--rejects is the same file as"),
    (["--out", "{d}/file/o.json"], "is not a directory"),
])
def test_output_paths_checked_before_any_work(tiny: Path, cmd: str, flags: list[str], needle: str) -> None:
    (tiny / "dir.json").mkdir()
    (tiny / "file").write_text("x")
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 9, "image_id": 1, "caption": "Red."}]}
    (tiny / "coco.json").write_text(json.dumps(coco))
    inp = tiny / ("in.json" if cmd == "llava" else "coco.json")
    before = sorted(p.name for p in tiny.iterdir())
    p = run("clean", cmd, inp, "--images", tiny / "img", *[f.format(d=tiny).replace("IN", inp.name) for f in flags], "-q")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert sorted(p.name for p in tiny.iterdir()) == before  # nothing written, nothing half-done
    assert list((tiny / "dir.json").iterdir()) == []


def test_empty_input_exit_2_but_empty_array_is_valid(tiny: Path) -> None:
    for content in ("", "  \n\n"):
        (tiny / "e.json").write_text(content)
        p = run("clean", "llava", tiny / "e.json", "--images", tiny / "img", "--out", tiny / "o.json", "-q")
        assert p.returncode == 2, p.stderr
        assert p.stderr.strip() == f"error: {tiny / 'e.json'}: empty file, expected a JSON array or JSON Lines"
        assert not (tiny / "o.json").exists()
    (tiny / "e.json").write_text("[]\n")
    p = run("clean", "llava", tiny / "e.json", "--images", tiny / "img", "--out", tiny / "o.json", "-q")
    assert p.returncode == 0, p.stderr
    assert json.loads((tiny / "o.json").read_text()) == []
    assert json.loads((tiny / "o.report.json").read_text())["input"] == 0


def test_invalid_utf8_exit_2_line_and_column(tiny: Path) -> None:
    (tiny / "u.jsonl").write_bytes(b'{"id": "a"}\n{"id": "\xc3\xa9\xff"}\n')
    p = run("clean", "llava", tiny / "u.jsonl", "--images", tiny / "img", "--out", tiny / "o.json", "-q")
    assert p.returncode == 2
    assert p.stderr.strip().startswith(f"error: {tiny / 'u.jsonl'}:2:10: not UTF-8 text"), p.stderr


def test_empty_id_gets_the_default_id(tiny: Path) -> None:
    recs = json.loads((tiny / "in.json").read_text())
    recs[0]["id"] = ""
    recs[1] = {**recs[0], "id": "  ", "conversations": [{"from": "human", "value": "<image>\nAgain?"}, {"from": "gpt", "value": "Red."}]}
    (tiny / "in.json").write_text(json.dumps(recs))
    p = run("clean", "llava", tiny / "in.json", "--images", tiny / "img", "--out", tiny / "o.json", "-q")
    assert p.returncode == 0, p.stderr
    assert [r["id"] for r in json.loads((tiny / "o.json").read_text())] == ["in-0", "in-1"]
