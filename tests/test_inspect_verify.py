"""`mmdata inspect --verify`: damaged shards are found and named (shard + key), exit 1, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmdata.inspect.verify import verify_shards
from test_inspect_kit import CLEAN_SPECS, spec, write_dataset


@pytest.fixture()
def ds(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "ds", CLEAN_SPECS)
    return tmp_path / "ds"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmdata.cli", "inspect", *args], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])


def _row(ds: Path, key: str) -> dict:
    rows = pq.read_table(ds / "index.parquet").to_pylist()
    return next(r for r in rows if r["key"] == key)


def _flip(path: Path, at: int, value: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[at] = (data[at] ^ 0xFF) if value is None else value
    path.write_bytes(bytes(data))


def _codes(problems) -> set[tuple[str, str | None, str]]:
    return {(p.shard, p.key, p.code) for p in problems}


def test_clean_data_set_verifies(ds: Path) -> None:
    assert verify_shards([ds], workers=1) == []
    res = _cli(str(ds), "--verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "verified: 3 shards, 7 samples, no problems" in res.stdout


def test_truncated_shard_names_shard_and_key(ds: Path) -> None:
    tar = ds / "shard-000001.tar"
    last = _row(ds, "000000005")  # the last sample: json + one jpg
    cut = last["offset"] + last["nbytes"] - 1000  # inside its image
    tar.write_bytes(tar.read_bytes()[:cut])
    codes = _codes(verify_shards([ds], workers=1))
    assert ("shard-000001.tar", "000000005", "truncated") in codes
    assert ("shard-000001.tar", None, "sha256_mismatch") in codes
    assert ("shard-000001.tar", None, "bytes_mismatch") in codes
    res = _cli(str(ds), "--verify", "--json")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = json.loads(res.stdout)["errors"]
    msg = next(e["message"] for e in errors if e["code"] == "truncated")
    assert "truncated: member '000000005.jpg' has" in msg


def test_last_1000_bytes_cut(ds: Path) -> None:
    tar = ds / "shard-000002.tar"
    tar.write_bytes(tar.read_bytes()[:-1000])
    problems = verify_shards([ds], workers=1)
    assert ("shard-000002.tar", None, "sha256_mismatch") in _codes(problems)
    res = _cli(str(ds), "--verify")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "shard-000002.tar: size" in res.stdout


def test_flipped_image_byte_breaks_checksum_and_decode(ds: Path) -> None:
    r = _row(ds, "000000002")
    tar = ds / "shard-000000.tar"
    json_len = len(json.dumps({}))  # placeholder, the json member is one 512-byte header + padded data
    del json_len
    # The image member header follows the json member: find its data start by reading the tar.
    import tarfile

    with tarfile.open(tar) as tf:
        jpg = tf.getmember("000000002.jpg")
    _flip(tar, jpg.offset_data + 1, 0x00)  # SOI marker FF D8 -> FF 00: no longer a JPEG
    problems = verify_shards([ds], workers=1)
    codes = _codes(problems)
    assert ("shard-000000.tar", None, "sha256_mismatch") in codes
    assert ("shard-000000.tar", "000000002", "bad_image") in codes
    assert r["offset"] < jpg.offset_data


def test_flipped_byte_in_jpeg_scan_is_caught_by_sha256(ds: Path) -> None:
    import tarfile

    tar = ds / "shard-000000.tar"
    with tarfile.open(tar) as tf:
        jpg = tf.getmember("000000000.jpg")
    _flip(tar, jpg.offset_data + jpg.size // 2)
    assert ("shard-000000.tar", None, "sha256_mismatch") in _codes(verify_shards([ds], workers=1))


def test_broken_json_member(ds: Path) -> None:
    r = _row(ds, "000000004")
    _flip(ds / "shard-000001.tar", r["offset"] + 512, ord("X"))  # first byte of 000000004.json: '{' -> 'X'
    problems = verify_shards([ds], workers=1)
    bad = [p for p in problems if p.code == "bad_json"]
    assert [(p.shard, p.key) for p in bad] == [("shard-000001.tar", "000000004")]
    assert bad[0].message.startswith("000000004.json: invalid JSON")
    res = _cli(str(ds), "--verify")
    assert res.returncode == 1
    assert "shard-000001.tar 000000004: 000000004.json: invalid JSON" in res.stdout


def test_manifest_count_mismatch(ds: Path) -> None:
    m = json.loads((ds / "manifest.json").read_text())
    m["shards"][0]["samples"] = 2
    m["shards"][0]["last_key"] = "000000001"
    (ds / "manifest.json").write_text(json.dumps(m))
    msgs = {(p.shard, p.key, p.message) for p in verify_shards([ds], workers=1)}
    assert ("shard-000000.tar", None, "shard holds 3 samples, manifest says 2") in msgs
    assert ("shard-000000.tar", "000000002", "last key 000000002, manifest says 000000001") in msgs


def test_damaged_header_mid_archive_is_not_taken_for_the_end(ds: Path) -> None:
    # Python's tarfile stops silently at a header with a bad checksum; --verify must not.
    r = _row(ds, "000000001")
    _flip(ds / "shard-000000.tar", r["offset"] + 10)  # inside the name field of 000000001.json's header
    problems = verify_shards([ds], workers=1)
    assert any(p.shard == "shard-000000.tar" and p.code == "bad_tar" and "checksum" in p.message for p in problems)
    assert any(p.code == "missing_sample" and p.key == "000000001" for p in problems)


def test_record_breaking_the_contract_is_named(tmp_path: Path) -> None:
    specs = [spec(0, [(224, 224)]), spec(1, [(224, 224)], gpt="Look: <image>")]
    write_dataset(tmp_path / "ds", specs)
    problems = verify_shards([tmp_path / "ds"], workers=1)
    assert [(p.key, p.code) for p in problems] == [("000000001", "bad_record")]
    assert "image_token_mismatch" in problems[0].message


def test_workers_give_the_same_answer(ds: Path) -> None:
    r = _row(ds, "000000004")
    _flip(ds / "shard-000001.tar", r["offset"] + 512, ord("X"))
    (ds / "shard-000002.tar").write_bytes((ds / "shard-000002.tar").read_bytes()[:3000])
    one = verify_shards([ds], workers=1)
    two = verify_shards([ds], workers=2)
    assert one == two and len(one) >= 3


def test_index_out_of_order_falls_back_to_per_shard_reads(ds: Path) -> None:
    t = pq.read_table(ds / "index.parquet")
    order = [6, 0, 1, 2, 3, 4, 5]  # shard-000002's row first: rows of a shard no longer contiguous
    pq.write_table(t.take(order), ds / "index.parquet")
    problems = verify_shards([ds], workers=2)
    assert [(p.key, p.code) for p in problems] == [("000000000", "duplicate_key")]
    assert "keys repeated or out of order" in problems[0].message


def test_index_rows_missing_for_a_shard(ds: Path) -> None:
    t = pq.read_table(ds / "index.parquet")
    pq.write_table(t.slice(0, 6), ds / "index.parquet")  # drop shard-000002's only row
    codes = _codes(verify_shards([ds], workers=1))
    assert ("shard-000002.tar", "000000006", "index_mismatch") in codes
    assert ("shard-000002.tar", None, "count_mismatch") in codes  # index 0 rows vs manifest 1


def test_wrong_types_in_a_sample_json_are_problems_not_crashes(tmp_path: Path) -> None:
    import io
    import tarfile

    from mmdata.inspect.stats import inspect_shards

    rec = {"id": "a", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                          {"from": "gpt", "value": "Yo"}],
           "images": [{"width": "wide", "height": None, "image_tokens": "many"}], "image_tokens": "lots"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in (("000000000.json", json.dumps(rec).encode()), ("000000000.jpg", b"not a jpeg")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    (tmp_path / "a.tar").write_bytes(buf.getvalue())
    codes = {p.code for p in verify_shards([tmp_path / "a.tar"], workers=1)}
    assert {"bad_record", "bad_image"} <= codes and "internal" not in codes
    assert inspect_shards([tmp_path / "a.tar"])["samples"] == 1


def test_cut_inside_the_padding_says_so(ds: Path) -> None:
    import tarfile

    tar = ds / "shard-000001.tar"
    with tarfile.open(tar) as t:
        m = next(m for m in t.getmembers() if m.size % 512 and m.name.endswith(".jpg"))
    tar.write_bytes(tar.read_bytes()[:m.offset_data + m.size + 3])  # the member whole, its padding cut
    msgs = [p.message for p in verify_shards([ds], workers=1) if p.code == "truncated"]
    assert len(msgs) == 1, msgs
    pad = -m.size % 512
    assert msgs[0].endswith(f"ends inside the padding after member {m.name!r} (3 of {pad} padding bytes): "
                            "the tar is truncated"), msgs[0]
    assert f"has {m.size} of {m.size} bytes" not in msgs[0]


def test_missing_manifest_fails_verify_but_the_summary_warns(ds: Path) -> None:
    (ds / "manifest.json").unlink()
    codes = _codes(verify_shards([ds], workers=1))
    assert ("-", None, "missing_manifest") in codes
    res = _cli(str(ds), "--verify")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"-: {ds / 'manifest.json'} is missing: shard counts, bytes and sha256 cannot be checked" in res.stdout
    assert "Traceback" not in res.stderr
    res = _cli(str(ds), "--json")  # the summary still runs from the index, with a warning
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert (out["samples"], out["errors"]) == (7, [])
    assert [w["code"] for w in out["warnings"]] == ["missing_manifest"]
    assert "warning: " in res.stderr and "manifest.json is missing" in res.stderr
    res = _cli(str(ds), "--verify", "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 1 and out["warnings"] == []
    assert [e["code"] for e in out["errors"]] == ["missing_manifest"]
