"""The one shard layout on local disk and on S3 (moto): the same bytes whatever the workers or the
storage with no extra flag, keys from input positions, --max-shard-bytes parts, resume keeps finished
jobs (also during the final move), inspect and the loader read the S3 folder as the local one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_shard_writer import make_set, tree_bytes

from mmdata import storage
from mmdata.errors import InputError
from mmdata.format.names import STAGING, done_name, part_name
from mmdata.shard.writer import write_shards

MMDATA = [sys.executable, "-m", "mmdata.cli"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("planned")
    src, img = make_set(root)
    return root, src, img


@pytest.fixture
def s3env(s3_server, monkeypatch):
    s3_server.use(monkeypatch)
    return s3_server


@pytest.fixture(scope="module")
def local_out(data):
    root, src, img = data
    out = root / "local"
    write_shards([src], img, out, records_per_shard=7, workers=1)
    return out


def s3_tree(url: str) -> dict[str, bytes]:
    return {n: storage.read_bytes(storage.join(url, n)) for n in storage.listdir(url)}


def test_membership_and_keys_come_from_input_positions(local_out):
    m = json.loads((local_out / "manifest.json").read_text())
    assert m["options"]["samples_per_shard"] == 7 and m["options"]["max_shard_bytes"] == 1_000_000_000
    assert "records_per_shard" not in m["options"] and m["version"] == 2
    assert [s["name"] for s in m["shards"]] == [f"shard-{i:06d}.tar" for i in range(4)]  # 25 records / 7
    assert (m["samples"], m["rejected"]) == (16, 9)
    import pyarrow.parquet as pq

    t = pq.read_table(local_out / "index.parquet").to_pydict()
    # a key is the record's position; shard k holds records 7k..7k+6 (fewer samples where rejected)
    assert all(int(k) // 7 == s for k, s in zip(t["key"], t["shard_idx"]))
    assert t["key"][:3] == ["000000000", "000000001", "000000002"]
    assert sorted(p.name for p in local_out.iterdir()) == [
        "index.parquet", "manifest.json", "rejects.jsonl", *[f"shard-{i:06d}.tar" for i in range(4)]]


def test_same_bytes_for_any_worker_count(data, local_out):
    root, src, img = data
    out = root / "two"
    write_shards([src], img, out, records_per_shard=7, workers=2)
    assert tree_bytes(out) == tree_bytes(local_out)


def test_s3_output_is_byte_identical_and_leaves_nothing_else(data, local_out, s3env):
    root, src, img = data
    url = f"s3://{s3env.bucket}/planned/a"
    report = write_shards([src], img, url, records_per_shard=7, workers=2)
    assert report.samples == 16
    assert s3_tree(url) == tree_bytes(local_out)
    uploads = s3env.client().list_multipart_uploads(Bucket=s3env.bucket).get("Uploads", [])
    assert not uploads


def _listing(out) -> list[str]:
    return storage.listdir(out) if isinstance(out, str) else sorted(p.name for p in out.iterdir())


def _tree(out) -> dict[str, bytes]:
    return s3_tree(out) if isinstance(out, str) else tree_bytes(out)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_resume_skips_jobs_with_a_done_record(data, local_out, tmp_path, request, where):
    root, src, img = data
    out = tmp_path / "r" if where == "local" else f"s3://{request.getfixturevalue('s3env').bucket}/resume"
    import mmdata.shard.writer as w

    real, calls = w._run_chunk, []

    def killed_at_third_shard(tasks):
        calls.append(len(tasks))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(tasks)

    w._run_chunk = killed_at_third_shard
    try:
        with pytest.raises(KeyboardInterrupt):
            write_shards([src], img, out, records_per_shard=7, workers=1)
    finally:
        w._run_chunk = real
    assert _listing(out) == [STAGING]  # OUTDIR untouched; the finished jobs wait in staging
    assert _listing(storage.join(out, STAGING)) == [done_name(0), part_name(0, 0), done_name(1), part_name(1, 0),
                                                   "run.json"]
    report = write_shards([src], img, out, records_per_shard=7, workers=1, resume=True)
    assert report.resumed_shards == 2
    assert _tree(out) == tree_bytes(local_out)
    again = write_shards([src], img, out, records_per_shard=7, workers=1, resume=True)  # finished: no-op
    assert again.resumed_shards == 4 and _tree(out) == tree_bytes(local_out)


def test_a_done_record_that_does_not_match_is_redone(data, local_out, tmp_path):
    root, src, img = data
    out = tmp_path / "stale"
    with pytest.raises(KeyboardInterrupt):
        write_shards([src], img, out, records_per_shard=7, workers=1, progress=_interrupt_after(14))
    stage = out / STAGING
    assert (stage / done_name(1)).exists()
    (stage / done_name(0)).write_bytes(b'{"job": 0}')
    report = write_shards([src], img, out, records_per_shard=7, workers=1, resume=True)
    assert report.resumed_shards == 1 and tree_bytes(out) == tree_bytes(local_out)


def _interrupt_after(records_done: int):
    def progress(records, samples, rejected):
        if records >= records_done:
            raise KeyboardInterrupt
    return progress


def test_resume_onto_the_old_layout_is_refused_in_one_line(data, tmp_path):
    root, src, img = data
    old = tmp_path / "old"
    old.mkdir()
    (old / ".shard-000000.done.json").write_bytes(b"{}")  # the old --records-per-shard run's leftovers
    p = subprocess.run([*MMDATA, "shard", str(src), "--images", str(img), "--out", str(old), "--resume", "-q"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"error: {old}: --resume: this folder holds a run of the shard layout before manifest version 2 (keys by "
        "accepted sample, shards cut by bytes); re-shard without --resume"]
    finished = tmp_path / "v1"
    write_shards([src], img, finished, workers=1)
    m = json.loads((finished / "manifest.json").read_text())
    (finished / "manifest.json").write_text(json.dumps(m | {"version": 1}))
    with pytest.raises(InputError, match="re-shard without --resume"):
        write_shards([src], img, finished, workers=1, resume=True)
    write_shards([src], img, finished, workers=1)  # without --resume: re-sharded
    assert json.loads((finished / "manifest.json").read_text()) == m


def test_both_names_of_the_option_must_agree(data, tmp_path):
    root, src, img = data
    with pytest.raises(InputError) as e:
        write_shards([src], img, tmp_path / "x", samples_per_shard=4, records_per_shard=7)
    assert str(e.value) == ("--samples-per-shard 4 and --records-per-shard 7 are one option (records per job): "
                            "give one of them")
    assert not (tmp_path / "x").exists()
    r = write_shards([src], img, tmp_path / "y", samples_per_shard=7, records_per_shard=7, workers=1)
    assert len(r.shards) == 4


def test_no_flag_gives_the_same_bytes_on_disk_and_on_s3(data, s3env, tmp_path):
    """The default layout (N = 1000, 1 GB) and a job split into parts by --max-shard-bytes: local == S3."""
    root, src, img = data
    for name, kw in (("default", {}), ("split", {"max_shard_bytes": 100_000})):
        local, url = tmp_path / name, f"s3://{s3env.bucket}/noflag/{name}"
        a = write_shards([src], img, local, workers=2, **kw)
        b = write_shards([src], img, url, workers=1, **kw)
        assert s3_tree(url) == tree_bytes(local) and a.shards == b.shards
        if name == "default":
            assert len(a.shards) == 1  # 25 records: one job of N = 1000, under 1 GB
    assert len(a.shards) > 2  # the split: one job, several consecutive parts


def test_cli_shard_to_s3_then_inspect(data, local_out, s3env, s3_server):
    root, src, img = data
    url = f"s3://{s3_server.bucket}/planned/cli"
    p = subprocess.run([*MMDATA, "shard", str(src), "--images", str(img), "--out", url, "--records-per-shard", "7",
                        "-q"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert s3_tree(url) == tree_bytes(local_out)
    p = subprocess.run([*MMDATA, "inspect", url, "--json", "--verify"], capture_output=True, text=True, timeout=120)
    q = subprocess.run([*MMDATA, "inspect", str(local_out), "--json", "--verify"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == q.returncode == 0, p.stderr + q.stderr
    remote, local = json.loads(p.stdout), json.loads(q.stdout)
    assert remote.pop("paths") == [url] and local.pop("paths") == [str(local_out)]
    assert remote == local and remote["verified"] and remote["samples"] == 16


def test_cli_missing_bucket_is_one_line(data, s3env):
    root, src, img = data
    p = subprocess.run([*MMDATA, "shard", str(src), "--images", str(img), "--out", "s3://no-bucket/x",
                        "--records-per-shard", "7", "-q"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip() == (f"error: s3://no-bucket/x: bucket 'no-bucket' does not exist at {s3env.endpoint}: "
                                "create it or fix the URL")


@pytest.fixture(scope="module")
def remote_inputs(data, s3_server):
    """The cleaned records and the image folder, uploaded under s3://bucket/in/."""
    root, src, img = data
    c = s3_server.client()
    c.put_object(Bucket=s3_server.bucket, Key=f"in/{src.name}", Body=src.read_bytes())
    for p in img.rglob("*"):
        if p.is_file():
            c.put_object(Bucket=s3_server.bucket, Key=f"in/img/{p.relative_to(img).as_posix()}", Body=p.read_bytes())
    return f"s3://{s3_server.bucket}/in/{src.name}", f"s3://{s3_server.bucket}/in/img"


def test_inputs_and_images_on_s3_give_the_same_shards(data, local_out, s3env, remote_inputs, tmp_path):
    root, src, img = data
    src_url, img_url = remote_inputs
    planned = tmp_path / "planned"
    write_shards([src_url], img_url, planned, records_per_shard=7, workers=2)
    assert tree_bytes(planned) == tree_bytes(local_out)
    default_local, default_s3 = tmp_path / "dl", tmp_path / "ds"
    write_shards([src], img, default_local, samples_per_shard=4, workers=1)
    write_shards([src_url], img_url, default_s3, samples_per_shard=4, workers=1)
    assert tree_bytes(default_s3) == tree_bytes(default_local)
    rejects = (default_s3 / "rejects.jsonl").read_text()
    assert '"reason":"missing_image"' in rejects and '"reason":"unsafe_path"' in rejects


def test_cli_all_on_s3(data, local_out, s3env, remote_inputs):
    src_url, img_url = remote_inputs
    url = f"s3://{s3env.bucket}/planned/all-s3"
    p = subprocess.run([*MMDATA, "shard", src_url, "--images", img_url, "--out", url, "--records-per-shard", "7",
                        "-q"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert s3_tree(url) == tree_bytes(local_out)
    p = subprocess.run([*MMDATA, "shard", f"s3://{s3env.bucket}/in/nope.json", "--images", img_url, "--out", url,
                        "--records-per-shard", "7", "-q"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip() == f"error: s3://{s3env.bucket}/in/nope.json: no such file"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_split_jobs_resume_between_jobs_and_during_the_final_move(data, tmp_path, request, where, monkeypatch):
    """Jobs of 7 records split into parts by --max-shard-bytes: consecutive final names; a run
    interrupted after job 1, resumed, interrupted again in the middle of the final move (on S3 between
    a copy and its delete), resumed: the bytes of an uninterrupted run."""
    root, src, img = data
    kw = dict(samples_per_shard=7, max_shard_bytes=60_000, workers=1)
    ref = tmp_path / "ref"
    want = write_shards([src], img, ref, **kw)
    m = json.loads((ref / "manifest.json").read_text())
    assert [s["name"] for s in m["shards"]] == [f"shard-{i:06d}.tar" for i in range(len(m["shards"]))]
    assert len(m["shards"]) > 4  # more parts than the 4 jobs
    keys = [k for s in m["shards"] for k in (s["first_key"], s["last_key"])]
    assert keys == sorted(keys)
    out = str(tmp_path / "r") if where == "local" else f"s3://{request.getfixturevalue('s3env').bucket}/split"

    with pytest.raises(KeyboardInterrupt):
        write_shards([src], img, out, progress=_interrupt_after(14), **kw)
    assert _listing(out) == [STAGING]
    real, moved = storage.move, []

    def move_then_die(a, b):
        if len(moved) == 2:  # the third move: copied (S3) or not (local), then killed
            if storage.is_remote(a):
                storage.backend_for(a).client.copy(dict(zip(("Bucket", "Key"), a[5:].split("/", 1))),
                                                   *b[5:].split("/", 1))
            raise KeyboardInterrupt
        moved.append(a)
        real(a, b)

    monkeypatch.setattr(storage, "move", move_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_shards([src], img, out, resume=True, **kw)
    monkeypatch.setattr(storage, "move", real)
    assert "manifest.json" not in _listing(out) and STAGING in _listing(out)
    report = write_shards([src], img, out, resume=True, **kw)
    assert report.shards == want.shards and report.resumed_shards == len(want.shards)
    assert _tree(out) == tree_bytes(ref)
