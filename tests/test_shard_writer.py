"""write_shards: the on-disk format of DESIGN.md "Shard format", rejects, determinism across workers,
the layout (jobs of N records, keys = record positions, parts cut by --max-shard-bytes), index
offsets, manifest sha256, and resume after a crash."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmdata.errors import InputError
from mmdata.shard import write_shards
from mmdata.format.names import JOURNAL, STAGING, done_name, part_name
from mmdata.shard.resize import created_with

REPO = Path(__file__).resolve().parents[1]


def jpeg(w: int, h: int, seed: int = 0, quality: int = 85) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, seed * 37 % 256)], -1) + rng.integers(-8, 9, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def conv(q: str, a: str = "An answer.") -> list[dict]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def make_set(root: Path, n: int = 12) -> tuple[Path, Path]:
    """A cleaned records file over generated images: single, multi-image, text-only, dotted ids, rejects."""
    img = root / "img"
    img.mkdir(parents=True, exist_ok=True)
    sizes = [(640, 480), (308, 196), (1200, 900), (480, 640)]  # 308x196: already the processor's size
    recs: list[dict] = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        (img / f"p{i}.jpg").write_bytes(jpeg(w, h, seed=i))
        recs.append({"id": f"coco.{i}", "image": f"p{i}.jpg", "conversations": conv("<image>\nDescribe.", f"Photo {i}.")})
    (img / "sub").mkdir(exist_ok=True)
    (img / "sub" / "thin.jpg").write_bytes(jpeg(9000, 40))  # aspect 225: Qwen2-VL refuses it
    (img / "tiny.jpg").write_bytes(jpeg(20, 300))
    (img / "broken.jpg").write_bytes(jpeg(300, 200)[:500])
    recs += [
        {"id": 777, "conversations": conv("No picture here, just text.", "Fine.")},
        {"id": "multi.a", "image": ["p0.jpg", "p1.jpg"], "source": "mix",
         "conversations": conv("<image>\n<image>\nCompare.", "Left is bigger.")},
        {"conversations": conv("No id at all.")},
        {"id": "esc", "image": "../outside.jpg", "conversations": conv("<image>")},
        {"id": "abs", "image": "/etc/passwd", "conversations": conv("<image>")},
        {"id": "gone", "image": "missing.jpg", "conversations": conv("<image>")},
        {"id": "thin", "image": "sub/thin.jpg", "conversations": conv("<image>")},
        {"id": "tiny", "image": "tiny.jpg", "conversations": conv("<image>")},
        {"id": "broken", "image": "broken.jpg", "conversations": conv("<image>")},
        {"id": "badturns", "conversations": "nope"},
        "not an object",
        {"id": "mismatch", "image": "p0.jpg", "conversations": conv("no token")},
        {"id": "last", "image": "p2.jpg", "conversations": conv("<image> last")},
    ]
    src = root / "clean.json"
    src.write_text(json.dumps(recs))
    return src, img


EXPECTED_REJECTS = {
    "esc": "unsafe_path", "abs": "unsafe_path", "gone": "missing_image", "thin": "over_token_budget",
    "tiny": "image_too_small", "broken": "unreadable_image", "badturns": "malformed", None: "malformed",
    "mismatch": "image_token_mismatch",
}


KEYS = [f"{i:09d}" for i in [*range(15), 24]]  # the samples' record positions in make_set(n=12)


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def members(tar: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers()]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    src, img = make_set(root)
    out = root / "out"
    report = write_shards([src], img, out, samples_per_shard=4, workers=1)
    return src, img, out, report


def test_outputs_and_counts(made):
    src, img, out, report = made
    names = sorted(p.name for p in out.iterdir())
    # Jobs of 4 records: 0-3, 4-7, 8-11, 12-15 (3 samples), 16-19 and 20-23 (all rejected: no shard), 24.
    assert names == ["index.parquet", "manifest.json", "rejects.jsonl",  # no staging once finished
                     "shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard-000003.tar",
                     "shard-000004.tar"]
    assert not list(out.glob(".*.tmp"))
    # 12 photos + text-only + multi + no-id + last = 16 samples; 9 rejects; every record accounted for.
    assert (report.samples, report.rejected, report.records) == (16, 9, 25)


def test_rejects_have_reasons_and_the_original_record(made):
    src, img, out, _ = made
    rows = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rows} == EXPECTED_REJECTS
    recs = json.loads(src.read_text())
    for r in rows:
        assert r["record"] == recs[r["index"]] and r["input"] == "clean.json" and r["detail"]
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)


def test_keys_have_no_dots_and_ids_are_kept(made):
    _, _, out, _ = made
    seen = []
    for tar in sorted(out.glob("shard-*.tar")):
        for name, data in members(tar):
            key = name.split(".", 1)[0]
            if name.endswith(".json"):
                seen.append((key, json.loads(data)["id"]))
    assert [k for k, _ in seen] == KEYS  # record positions: rejects leave gaps
    ids = [i for _, i in seen]
    assert ids[:12] == [f"coco.{i}" for i in range(12)]
    assert ids[12:] == ["777", "multi.a", "clean-14", "last"]


def test_sample_members_single_multi_and_text_only(made):
    _, _, out, _ = made
    by_key: dict[str, list[str]] = {}
    data: dict[str, bytes] = {}
    for tar in sorted(out.glob("shard-*.tar")):
        for name, d in members(tar):
            by_key.setdefault(name.split(".", 1)[0], []).append(name)
            data[name] = d
    assert by_key["000000000"] == ["000000000.json", "000000000.jpg"]
    assert by_key["000000012"] == ["000000012.json"]  # text-only: the json alone
    assert by_key["000000013"] == ["000000013.json", "000000013.0.jpg", "000000013.1.jpg"]
    multi = json.loads(data["000000013.json"])
    assert multi["image"] == ["p0.jpg", "p1.jpg"] and multi["source"] == "mix"
    assert [(i["width"], i["height"]) for i in multi["images"]] == [(448, 336), (308, 196)]
    assert multi["image_tokens"] == 192 + 77
    assert Image.open(io.BytesIO(data["000000013.0.jpg"])).size == (448, 336)
    text = json.loads(data["000000012.json"])
    assert text["images"] == [] and text["image_tokens"] == 0
    first = json.loads(data["000000000.json"])
    assert list(first)[:3] == ["id", "image", "conversations"]
    assert first["images"] == [{"width": 448, "height": 336, "orig_width": 640, "orig_height": 480,
                                "image_tokens": 192, "passthrough": False}]


def test_passthrough_bytes_in_the_tar(made):
    _, img, out, _ = made
    stored = dict(members(out / "shard-000000.tar"))
    assert stored["000000001.jpg"] == (img / "p1.jpg").read_bytes()  # 308x196 JPEG: untouched
    assert stored["000000000.jpg"] != (img / "p0.jpg").read_bytes()


def test_tar_metadata_is_fixed(made):
    _, _, out, _ = made
    with tarfile.open(out / "shard-000001.tar") as t:
        for m in t.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
    assert (out / "shard-000001.tar").stat().st_size % 10240 == 0


def test_index_rows_point_at_their_tar_headers(made):
    _, _, out, _ = made
    t = pq.read_table(out / "index.parquet")
    assert t.column_names[:14] == ["key", "shard", "shard_idx", "offset", "nbytes", "id", "n_images", "image_tokens",
                                   "image_tokens_list", "widths", "heights", "text_chars", "n_turns", "source"]
    rows = t.to_pylist()
    assert [r["key"] for r in rows] == KEYS
    for r in rows:
        blob = (out / r["shard"]).read_bytes()[r["offset"]: r["offset"] + r["nbytes"]]
        with tarfile.open(fileobj=io.BytesIO(blob + b"\0" * 1024)) as tf:
            names = tf.getnames()
            meta = json.loads(tf.extractfile(names[0]).read())
        assert names[0] == f"{r['key']}.json" and all(n.startswith(r["key"] + ".") for n in names)
        assert len(names) == 1 + r["n_images"]
        assert meta["id"] == r["id"] and meta["image_tokens"] == r["image_tokens"]
        assert [i["width"] for i in meta["images"]] == r["widths"]
        assert r["shard"] == f"shard-{r['shard_idx']:06d}.tar"
    multi = rows[13]
    assert (multi["n_images"], multi["image_tokens_list"], multi["source"]) == (2, [192, 77], "mix")
    # text_chars: "<image>\n<image>\nCompare." minus the two tokens = "\n\nCompare." (10) + "Left is bigger." (15).
    assert multi["text_chars"] == 10 + 15 and multi["n_turns"] == 2
    assert rows[0]["source"] == "clean"


def test_manifest_counts_and_sha256(made):
    _, _, out, report = made
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "mmdata.shards" and m["version"] == 2
    assert m["options"] == {"rule": "qwen2vl", "max_res": 448, "max_image_tokens": 1280, "quality": 90,
                            "samples_per_shard": 4, "max_shard_bytes": 1_000_000_000, "inputs": ["clean.json"],
                            "created_with": created_with()}
    assert set(created_with()) == {"pillow", "simplejpeg", "torch"}
    assert (m["samples"], m["rejected"]) == (16, 9)
    assert m["image_tokens"] == sum(pq.read_table(out / "index.parquet").column("image_tokens").to_pylist())
    for s in m["shards"]:
        data = (out / s["name"]).read_bytes()
        assert s["sha256"] == hashlib.sha256(data).hexdigest() and s["bytes"] == len(data)
    assert [s["samples"] for s in m["shards"]] == [4, 4, 4, 3, 1]
    assert (m["shards"][1]["first_key"], m["shards"][1]["last_key"]) == ("000000004", "000000007")
    assert (m["shards"][4]["first_key"], m["shards"][4]["last_key"]) == ("000000024", "000000024")
    assert "/" not in json.dumps(m["options"])  # no absolute paths


def test_same_bytes_whatever_the_number_of_workers(made, tmp_path):
    src, img, out, _ = made
    out2 = tmp_path / "w2"
    write_shards([src], img, out2, samples_per_shard=4, workers=2)
    assert tree_bytes(out2) == tree_bytes(out)


def test_max_shard_bytes_splits_before_the_limit(made, tmp_path):
    src, img, _, _ = made
    out = tmp_path / "b"
    report = write_shards([src], img, out, max_shard_bytes=100_000, workers=1)  # --max-shard-bytes 100KB
    assert len(report.shards) > 1  # one job (25 records < 1000) in several parts
    for s in report.shards:  # the finished file, end-of-archive blocks and record padding included
        assert s.bytes == (out / s.name).stat().st_size <= 100_000
    assert [s.name for s in report.shards] == [f"shard-{i:06d}.tar" for i in range(len(report.shards))]
    keys = [k for s in report.shards for k in (s.first_key, s.last_key)]
    assert keys == sorted(keys) and keys[0] == KEYS[0] and keys[-1] == KEYS[-1]
    assert sum(s.samples for s in report.shards) == 16


def test_three_records_a_job_keys_are_record_positions(made, tmp_path):
    """--samples-per-shard 3: job k = records 3k..3k+2, so a shard holds <= 3 samples, all of one
    job; keys are the records' positions (rejected records leave gaps); all-rejected jobs make none."""
    src, img, _, _ = made
    out = tmp_path / "three"
    report = write_shards([src], img, out, samples_per_shard=3, workers=2)
    t = pq.read_table(out / "index.parquet").to_pydict()
    assert t["key"] == KEYS
    assert [s.samples for s in report.shards] == [3, 3, 3, 3, 3, 1]  # records 0-14 and 24; 15-23 rejected
    for s in report.shards:
        keys = [k for k, n in zip(t["key"], t["shard"]) if n == s.name]
        assert len(keys) <= 3 and len({int(k) // 3 for k in keys}) == 1
        assert (keys[0], keys[-1]) == (s.first_key, s.last_key)
        assert [n for n, _ in members(out / s.name) if n.endswith(".json")] == [f"{k}.json" for k in keys]


def test_a_sample_bigger_than_max_shard_bytes_gets_a_shard_of_its_own(made, tmp_path):
    src, img, _, _ = made
    out = tmp_path / "one"
    report = write_shards([src], img, out, max_shard_bytes=10240, workers=1)
    assert [s.samples for s in report.shards] == [1] * 16
    assert sum(s.bytes > 10240 for s in report.shards) == 14  # the image samples; the 2 text-only ones fit


def test_several_inputs_number_keys_across_files(made, tmp_path):
    src, img, _, _ = made
    second = tmp_path / "more.jsonl"
    second.write_text(json.dumps({"id": "x.1", "image": "p3.jpg", "conversations": conv("<image>")}) + "\n")
    out = tmp_path / "two"
    report = write_shards([src, second], img, out, workers=1)
    rows = pq.read_table(out / "index.parquet").to_pylist()
    # keys count records across the files in order: the second file's first record is position 25
    assert report.samples == 17 and rows[-1]["key"] == "000000025" and rows[-1]["source"] == "more"
    assert json.loads((out / "manifest.json").read_text())["options"]["inputs"] == ["clean.json", "more.jsonl"]


def test_symlink_escaping_the_root_is_unsafe(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg(100, 100))
    os.symlink(outside, img / "link.jpg")
    src = tmp_path / "c.json"
    src.write_text(json.dumps([{"id": "s", "image": "link.jpg", "conversations": conv("<image>")}]))
    write_shards([src], img, tmp_path / "out", workers=1)
    assert json.loads((tmp_path / "out" / "rejects.jsonl").read_text())["reason"] == "unsafe_path"


def test_bad_input_names_file_and_place(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1},\n  {oops}]')
    (tmp_path / "img").mkdir()
    with pytest.raises(InputError) as e:
        write_shards([bad], tmp_path / "img", tmp_path / "out", workers=1)
    assert e.value.line == 2 and "bad.json" in str(e.value)
    with pytest.raises(InputError, match="no such file"):
        write_shards([tmp_path / "nope.json"], tmp_path / "img", tmp_path / "out", workers=1)
    with pytest.raises(InputError, match="rule"):
        write_shards([bad], tmp_path / "img", tmp_path / "out", rule="gpt4v")


def test_text_tokens_with_a_tokenizer(made, tmp_path):
    pytest.importorskip("mmdata.text.templates")
    src, img, _, _ = made
    tok = REPO / "mmdata" / "assets" / "tokenizer.json"
    if not tok.exists():
        pytest.skip("the packaged tokenizer is not there")
    out = tmp_path / "tt"
    write_shards([src], img, out, workers=1, tokenizer=tok)
    t = pq.read_table(out / "index.parquet")
    tt = t.column("text_tokens").to_pylist()
    assert len(tt) == 16 and all(x > 0 for x in tt)
    assert json.loads((out / "manifest.json").read_text())["options"]["text_tokens"]["template"] == "qwen2vl"


# ---------------------------------------------------------------------------------------------
# resume


def test_resume_after_an_interrupt_gives_the_same_bytes(made, tmp_path):
    src, img, out, _ = made
    out2 = tmp_path / "r"
    Crash, crash = _crash_after(9)
    with pytest.raises(Crash):
        write_shards([src], img, out2, samples_per_shard=4, workers=1, progress=crash)
    stage = out2 / STAGING  # a run writes here; OUTDIR changes only when it is complete
    done = sorted(p.name for p in stage.glob("job-*.done.json"))
    assert done == [done_name(k) for k in range(3)]  # jobs 0-2 finished when 12 samples were in
    assert not (out2 / "manifest.json").exists() and not list(out2.glob("shard-*"))
    # What a SIGKILL leaves: a half-written temp part of the next job, from a process now gone.
    (stage / f".{part_name(3, 0)}.999999999.x.tmp").write_bytes(b"partial")
    report = write_shards([src], img, out2, samples_per_shard=4, workers=2, resume=True)
    assert report.resumed_shards == 3
    assert tree_bytes(out2) == tree_bytes(out) and not stage.exists()


def test_resume_rewrites_only_a_damaged_job(made, tmp_path):
    src, img, out, _ = made
    out2 = tmp_path / "d"
    Crash, crash = _crash_after(13)
    with pytest.raises(Crash):
        write_shards([src], img, out2, samples_per_shard=4, workers=1, progress=crash)
    assert (out2 / STAGING / done_name(3)).exists()  # jobs 0-3 done (15 samples)
    tar = out2 / STAGING / part_name(1, 0)
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes: the sha256 in the done-record catches it
    tar.write_bytes(bytes(data))
    report = write_shards([src], img, out2, samples_per_shard=4, workers=1, resume=True)
    assert report.resumed_shards == 3  # jobs 0, 2, 3 kept; job 1 made again
    assert tree_bytes(out2) == tree_bytes(out)


def test_resume_refuses_other_options(made, tmp_path):
    src, img, _, _ = made
    out2 = tmp_path / "o"
    write_shards([src], img, out2, samples_per_shard=4, workers=1)
    with pytest.raises(InputError, match="differ"):
        write_shards([src], img, out2, samples_per_shard=5, workers=1, resume=True)


def test_a_fresh_run_replaces_stale_shards(made, tmp_path):
    src, img, out, _ = made
    out2 = tmp_path / "s"
    out2.mkdir()
    (out2 / "shard-000009.tar").write_bytes(b"old")
    write_shards([src], img, out2, samples_per_shard=4, workers=1)
    assert tree_bytes(out2) == tree_bytes(out)


_KILL_SCRIPT = """
import sys
from mmdata.shard import write_shards
write_shards([sys.argv[1]], sys.argv[2], sys.argv[3], samples_per_shard=1, workers=1)
"""


def test_killed_process_then_resume_gives_the_same_bytes(tmp_path):
    src, img = make_set(tmp_path / "data", n=40)
    ref = tmp_path / "ref"
    write_shards([src], img, ref, samples_per_shard=1, workers=1)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(src), str(img), str(out)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / STAGING / done_name(5)).exists():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert not (out / "manifest.json").exists()
    report = write_shards([src], img, out, samples_per_shard=1, workers=2, resume=True)
    assert report.resumed_shards >= 5
    assert tree_bytes(out) == tree_bytes(ref)


_FAILING_WORKER = """
import sys
from mmdata.errors import InputError
from mmdata.shard import writer

def broken(tasks):
    raise InputError(sys.argv[1], "bad thing", 3, 4)

writer._run_chunk = broken  # inherited by the forked pool workers
try:
    writer.write_shards([sys.argv[1]], sys.argv[2], sys.argv[3], workers=2)
except InputError as e:
    print("caught", e)
"""


def test_a_worker_error_reaches_the_caller_instead_of_hanging(made, tmp_path):
    src, img, _, _ = made
    p = subprocess.run([sys.executable, "-c", _FAILING_WORKER, str(src), str(img), str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"caught {src}:3:4: bad thing"
    assert not list((tmp_path / "o").glob(".*.tmp"))


def _crash_after(samples_done: int):
    class Crash(Exception):
        pass

    def crash(records, samples, rejected):
        if samples >= samples_done:
            raise Crash

    return Crash, crash


def _same_length_edit(src: Path) -> None:
    text = src.read_text()
    assert "Photo 11." in text
    src.write_text(text.replace("Photo 11.", "Photo 99."))  # same size, other content


def test_resume_refuses_an_input_edited_in_place_with_the_same_size(tmp_path):
    src, img = make_set(tmp_path / "data")
    out = tmp_path / "r"
    Crash, crash = _crash_after(5)
    with pytest.raises(Crash):
        write_shards([src], img, out, samples_per_shard=4, workers=1, progress=crash)
    size = src.stat().st_size
    _same_length_edit(src)
    assert src.stat().st_size == size
    with pytest.raises(InputError) as e:
        write_shards([src], img, out, samples_per_shard=4, workers=1, resume=True)
    assert str(e.value) == f"{src}: --resume: input changed since the run being resumed (sha256 differs); " \
                           "run again without --resume"


def test_resume_of_a_finished_folder_refuses_a_changed_input_on_the_command_line(tmp_path):
    src, img = make_set(tmp_path / "data", n=4)
    out = tmp_path / "f"
    write_shards([src], img, out, samples_per_shard=4, workers=1)
    _same_length_edit_small = src.read_text().replace("Photo 3.", "Photo 7.")
    src.write_text(_same_length_edit_small)
    p = subprocess.run([sys.executable, "-m", "mmdata.cli", "shard", str(src), "--images", str(img), "--out", str(out),
                        "--samples-per-shard", "4", "--resume", "-q"], capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: {src}: --resume: input changed since the run being resumed "
                                             "(sha256 differs); run again without --resume"]


def test_a_finished_run_leaves_no_journal_and_resume_is_a_no_op(made, tmp_path):
    src, img, out, report = made
    assert not (out / JOURNAL).exists() and not (out / STAGING).exists()
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    again = write_shards([src], img, out, samples_per_shard=4, workers=1, resume=True)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before  # nothing rewritten
    assert again.resumed_shards == len(report.shards)
    assert (again.samples, again.rejected, again.images, again.image_tokens, again.passthrough, again.bytes,
            again.reasons, again.shards) == (report.samples, report.rejected, report.images, report.image_tokens,
                                             report.passthrough, report.bytes, report.reasons, report.shards)


def test_resume_of_a_finished_folder_with_a_missing_shard_rewrites_it(made, tmp_path):
    src, img, out, _ = made
    out2 = tmp_path / "m"
    write_shards([src], img, out2, samples_per_shard=4, workers=1)
    (out2 / "shard-000002.tar").unlink()
    write_shards([src], img, out2, samples_per_shard=4, workers=1, resume=True)
    assert tree_bytes(out2) == tree_bytes(out)
    with pytest.raises(InputError, match="differ"):
        write_shards([src], img, out2, samples_per_shard=5, workers=1, resume=True)


_KILL_WORKERS_SCRIPT = """
import sys
from mmdata.shard import write_shards
write_shards([sys.argv[1]], sys.argv[2], sys.argv[3], samples_per_shard=1, workers=2)
"""


def test_workers_exit_quietly_when_the_main_process_is_killed(tmp_path):
    src, img = make_set(tmp_path / "data", n=64)
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_WORKERS_SCRIPT, str(src), str(img), str(out)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any((out / STAGING).glob("job-*")):  # the first results are in: chunks are in flight
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)  # EOF only once every worker has closed stderr too
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert proc.returncode == -signal.SIGKILL
    assert err == ""


_PIDS_SCRIPT = """
import os, sys, time
from mmdata.shard import writer

real = writer._run_chunk

def recording(tasks):
    time.sleep(0.2)  # long enough that one worker cannot take every chunk before the other starts
    with open(os.path.join(sys.argv[4], str(os.getpid())), "a") as f:
        f.write("x")
    return real(tasks)

writer._run_chunk = recording  # inherited by the forked pool workers
writer.write_shards([sys.argv[1]], sys.argv[2], sys.argv[3], workers=2)
"""


def test_one_job_still_uses_every_worker(made, tmp_path):
    """25 records are one job (N = 1000): its records still go to both pool workers, in chunks."""
    src, img, out, _ = made
    pids = tmp_path / "pids"
    pids.mkdir()
    big, bimg = make_set(tmp_path / "data", n=40)  # 53 records: 4 chunks of 16
    p = subprocess.run([sys.executable, "-c", _PIDS_SCRIPT, str(big), str(bimg), str(tmp_path / "o"), str(pids)],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert len(list(pids.iterdir())) == 2 and os.getpid() not in {int(q.name) for q in pids.iterdir()}
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["shards"][0]["first_key"] == "000000000"
