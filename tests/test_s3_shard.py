"""Planned shards (--records-per-shard) on local disk and on S3 (moto): the same bytes whatever the
workers or the storage, keys from input positions, resume keeps finished shards, inspect and the
loader read the S3 folder as they read the local one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from s3_server import moto_s3
from test_shard_writer import make_set, tree_bytes

from mmdata import storage
from mmdata.errors import InputError
from mmdata.shard.planned import done_name
from mmdata.shard.writer import write_shards

MMDATA = [sys.executable, "-m", "mmdata.cli"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("planned")
    src, img = make_set(root)
    return root, src, img


@pytest.fixture(scope="module")
def server():
    with moto_s3() as s:
        yield s


@pytest.fixture
def s3env(server, monkeypatch):
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return server


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
    assert m["options"]["records_per_shard"] == 7 and "max_shard_bytes" not in m["options"]
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
    assert _listing(out) == [done_name(0), done_name(1), "shard-000000.tar", "shard-000001.tar"]
    report = write_shards([src], img, out, records_per_shard=7, workers=1, resume=True)
    assert report.resumed_shards == 2
    assert _tree(out) == tree_bytes(local_out)
    again = write_shards([src], img, out, records_per_shard=7, workers=1, resume=True)  # finished: no-op
    assert again.resumed_shards == 4 and _tree(out) == tree_bytes(local_out)


def test_a_done_record_that_does_not_match_is_redone(data, local_out, tmp_path):
    root, src, img = data
    out = tmp_path / "stale"
    out.mkdir()
    (out / done_name(0)).write_bytes(b"{}")
    (out / "shard-000000.tar").write_bytes(b"junk")
    report = write_shards([src], img, out, records_per_shard=7, workers=1, resume=True)
    assert report.resumed_shards == 0 and tree_bytes(out) == tree_bytes(local_out)


def test_ray_and_s3_need_records_per_shard(data, s3env):
    root, src, img = data
    with pytest.raises(InputError, match="--engine ray needs --records-per-shard"):
        write_shards([src], img, root / "x", engine="ray")
    with pytest.raises(InputError, match="needs --records-per-shard"):
        write_shards([src], img, f"s3://{s3env.bucket}/x")


def test_cli_shard_to_s3_then_inspect(data, local_out, s3env, server):
    root, src, img = data
    url = f"s3://{server.bucket}/planned/cli"
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
def remote_inputs(data, server):
    """The cleaned records and the image folder, uploaded under s3://bucket/in/."""
    root, src, img = data
    c = server.client()
    c.put_object(Bucket=server.bucket, Key=f"in/{src.name}", Body=src.read_bytes())
    for p in img.rglob("*"):
        if p.is_file():
            c.put_object(Bucket=server.bucket, Key=f"in/img/{p.relative_to(img).as_posix()}", Body=p.read_bytes())
    return f"s3://{server.bucket}/in/{src.name}", f"s3://{server.bucket}/in/img"


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
