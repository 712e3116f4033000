"""`mmdata clean --engine ray` on the 2-node Ray cluster and `mmdata clean` on s3:// (moto): the same
OUT, rejects and report bytes as a local run; a dead --ray-address fails in one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_shard_writer import make_set

from mmdata.clean.pool import clean_engine
from mmdata.clean.sources.llava import clean_llava

MMDATA = [sys.executable, "-m", "mmdata.cli"]
NAMES = ("out.jsonl", "out.rejects.jsonl", "out.report.json")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A LLaVA file over generated images (passes and every image reject), and its local clean."""
    root = tmp_path_factory.mktemp("cleanray")
    src, img = make_set(root)
    local = root / "local"
    local.mkdir()
    clean_llava(src, img, local / "out.jsonl", workers=2)
    return src, img, {n: (local / n).read_bytes() for n in NAMES}


def test_ray_engine_gives_the_local_bytes(ray_cluster, data, tmp_path):
    src, img, want = data
    with clean_engine("ray", ray_cluster.address):
        report = clean_llava(src, img, tmp_path / "out.jsonl", workers=2)
    assert report.images_checked > 0 and report.rejected > 0
    assert {n: (tmp_path / n).read_bytes() for n in NAMES} == want


def test_cli_no_cluster_at_address(data, tmp_path):
    from s3_server import free_port

    src, img, _ = data
    addr = f"127.0.0.1:{free_port()}"
    p = subprocess.run([*MMDATA, "clean", "llava", str(src), "--images", str(img), "--out", str(tmp_path / "o.jsonl"),
                        "--engine", "ray", "--ray-address", addr, "-q"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().startswith(f"error: --ray-address {addr}: no Ray cluster there")
    assert len(p.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_cli_unknown_engine(data, tmp_path):
    src, img, _ = data
    p = subprocess.run([*MMDATA, "clean", "llava", str(src), "--images", str(img), "--out", str(tmp_path / "o.jsonl"),
                        "--engine", "spark", "-q"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--engine: unknown engine 'spark'" in p.stderr


@pytest.fixture
def s3(s3_server, data, monkeypatch):
    """The S3 variables set, and the LLaVA file and its images uploaded under s3://bucket/in and /images."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    src, img, _ = data
    c = s3_server.client()
    c.put_object(Bucket=s3_server.bucket, Key=f"in/{src.name}", Body=src.read_bytes())
    for f in sorted(img.rglob("*")):
        if f.is_file():
            c.put_object(Bucket=s3_server.bucket, Key=f"images/{f.relative_to(img).as_posix()}", Body=f.read_bytes())
    return s3_server


def _objects(s3_server, prefix: str) -> dict[str, bytes]:
    c = s3_server.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix).get("Contents", [])]
    return {k.rsplit("/", 1)[1]: c.get_object(Bucket=s3_server.bucket, Key=k)["Body"].read() for k in keys}


def test_clean_on_s3_gives_the_local_bytes(s3, data):
    src, _, want = data
    b = s3.bucket
    report = clean_llava(f"s3://{b}/in/{src.name}", f"s3://{b}/images", f"s3://{b}/clean/out.jsonl", workers=2)
    assert report.written > 0 and report.by_reason["missing_image"] == 1 and report.by_reason["unsafe_path"] == 2
    assert _objects(s3, "clean/") == want
    assert not s3.client().list_multipart_uploads(Bucket=b).get("Uploads")


def test_cli_clean_on_s3_local_input_and_explicit_rejects(s3, data, tmp_path):
    """The CLI with a local input, images on S3, OUT on S3 and the rejects local: the bytes of a local CLI run."""
    src, img, _ = data
    b = s3.bucket
    local = tmp_path / "local"
    p = subprocess.run([*MMDATA, "clean", "llava", str(src), "--images", str(img), "--out", str(local / "out.jsonl"), "-q"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*MMDATA, "clean", "llava", str(src), "--images", f"s3://{b}/images",
                        "--out", f"s3://{b}/cli/out.jsonl", "--rejects", str(tmp_path / "out.rejects.jsonl"), "-q"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert _objects(s3, "cli/") == {n: (local / n).read_bytes() for n in ("out.jsonl", "out.report.json")}
    assert (tmp_path / "out.rejects.jsonl").read_bytes() == (local / "out.rejects.jsonl").read_bytes()


def test_cli_clean_missing_s3_input_one_line(s3, data):
    _, img, _ = data
    b = s3.bucket
    p = subprocess.run([*MMDATA, "clean", "llava", f"s3://{b}/in/nope.jsonl", "--images", str(img),
                        "--out", f"s3://{b}/x/out.jsonl", "-q"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: s3://{b}/in/nope.jsonl: no such object"
    assert not _objects(s3, "x/")


def test_clean_hf_on_s3_gives_the_local_bytes_and_store(s3, tmp_path):
    """A parquet folder on S3 -> OUT, rejects, report and the images store on S3: the local run's bytes."""
    from test_clean_hf import ONEVISION, onevision_rows, write

    from mmdata.clean import clean_hf

    (tmp_path / "ov").mkdir()
    src = write(tmp_path / "ov" / "part-0.parquet", onevision_rows(), ONEVISION)
    local = tmp_path / "local"
    clean_hf(tmp_path / "ov", local / "clean.jsonl", workers=1, rows=2)
    b = s3.bucket
    s3.client().put_object(Bucket=b, Key="hf/ov/part-0.parquet", Body=src.read_bytes())
    clean_hf(f"s3://{b}/hf/ov", f"s3://{b}/hfout/clean.jsonl", workers=2, rows=2)
    c = s3.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=b, Prefix="hfout/").get("Contents", [])]
    got = {k[len("hfout/"):]: c.get_object(Bucket=b, Key=k)["Body"].read() for k in keys}
    want = {f.relative_to(local).as_posix(): f.read_bytes() for f in local.rglob("*") if f.is_file()}
    assert len(want) == 3 + 4  # OUT, rejects, report and four images in the store
    assert got == want


def test_ray_workers_read_s3_images_with_the_driver_credentials(ray_cluster, s3, data):
    src, _, want = data
    b = s3.bucket
    with clean_engine("ray", ray_cluster.address):
        clean_llava(f"s3://{b}/in/{src.name}", f"s3://{b}/images", f"s3://{b}/rayclean/out.jsonl", workers=2)
    assert _objects(s3, "rayclean/") == want


def test_clean_coco_on_s3_gives_the_local_bytes(s3, data, tmp_path):
    """A COCO captions file and its images on S3 (one missing, one broken): the local run's bytes."""
    import json

    from mmdata.clean import clean_coco

    _, img, _ = data
    names = ["p0.jpg", "p1.jpg", "broken.jpg", "missing.jpg", "./p2.jpg"]
    caps = {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
            "annotations": [{"id": 10 + i, "image_id": i, "caption": f"A photo {i}."} for i in range(len(names))]}
    src = tmp_path / "captions_val.json"
    src.write_text(json.dumps(caps))
    local = tmp_path / "local"
    clean_coco(src, img, local / "out.json", workers=1)
    b = s3.bucket
    s3.client().put_object(Bucket=b, Key="coco/captions_val.json", Body=src.read_bytes())
    rep = clean_coco(f"s3://{b}/coco/captions_val.json", f"s3://{b}/images", f"s3://{b}/cocoout/out.json", workers=2)
    assert rep.by_reason["missing_image"] == 1 and rep.by_reason["unreadable_image"] == 1
    assert _objects(s3, "cocoout/") == {f.name: f.read_bytes() for f in local.iterdir()}
