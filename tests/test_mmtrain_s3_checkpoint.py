"""`mmtrain run --save/--load s3://...` against a real local S3 endpoint (moto s3_server, signatures checked):
resume from object storage gives the uninterrupted run's losses and weights in both formats; a save whose
upload fails leaves the previous checkpoint the latest and no object or upload behind; a killed save's
objects are never loaded and are replaced by the next save; bad endpoint, bucket or keys are one line and
exit 2 before any training; `export` and `doctor` take the url."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from s3_server import free_port

from mmdata.errors import InputError
from mmtrain import checkpoint as ckpt
from mmtrain.run import TrainArgs, synthetic_data, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The s3_server's variables set in this process; yields (s3_server, a fresh s3:// prefix for the test)."""
    s3_server.use(monkeypatch)
    return s3_server, f"s3://{s3_server.bucket}/ck{time.monotonic_ns()}"


def _args(**kw) -> TrainArgs:
    base = dict(shards=["synthetic"], model="tiny", seq_len=128, global_batch_size=4, max_steps=4, lr=2e-3,
                log_interval=1, device="cpu", seed=0, num_workers=0)
    return TrainArgs(**{**base, **kw})


def _run(**kw):
    out = io.StringIO()
    return train(_args(**kw), synthetic_data, out=out), out.getvalue()


def _keys(s3_server, url: str) -> list[str]:
    prefix = url.split("/", 3)[3] + "/"
    c = s3_server.client()
    got = c.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix):] for o in got)


def _uploads(s3_server) -> list:
    return s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket).get("Uploads", [])


def _tracker(s3_server, url: str) -> str:
    key = url.split("/", 3)[3] + "/" + ckpt.TRACKER
    return s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read().decode()


@pytest.mark.parametrize("fmt", ["torch", "torch_dcp"])
def test_resume_from_s3_gives_the_uninterrupted_losses_and_weights(s3, tmp_path, fmt):
    s3_server, url = s3
    local = tmp_path / "local"
    full, _ = _run(max_steps=6, ckpt_format=fmt, save=str(local), save_interval=3)
    first, _ = _run(max_steps=6, ckpt_format=fmt, save=url, save_interval=3, exit_interval=3)
    assert first.iteration == 3 and _tracker(s3_server, url) == "3\n"
    second, text = _run(max_steps=6, ckpt_format=fmt, save=url, save_interval=3, load=url)
    assert f"loaded checkpoint {url}/iter_0000003 (iteration 3" in text
    assert [it for it in second.losses] == [4, 5, 6]
    for it in (1, 2, 3):
        assert first.losses[it] == full.losses[it]
    for it in (4, 5, 6):
        assert second.losses[it] == pytest.approx(full.losses[it], abs=1e-6)
    assert _tracker(s3_server, url) == "6\n"
    it, on_s3 = ckpt.load_model_state_dict(url)
    _, on_disk = ckpt.load_model_state_dict(local)
    assert it == 6 and sorted(on_s3) == sorted(on_disk)
    for k in on_disk:
        assert torch.allclose(on_s3[k], on_disk[k], atol=1e-6), k
    keys = _keys(s3_server, url)  # the local layout, object for object: no probe, temp or staging name
    local_files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert keys == local_files
    assert not _uploads(s3_server)


def _fail_uploads_of(monkeypatch, needle: str) -> list[str]:
    """Make every S3 upload whose key contains `needle` fail when it is completed (after its bytes went up)."""
    from mmdata.storage import s3 as s3mod

    failed: list[str] = []
    real = s3mod.MultipartWriter.complete

    def complete(self):
        if needle in self._key:
            failed.append(self._key)
            raise OSError("injected upload failure")
        return real(self)

    monkeypatch.setattr(s3mod.MultipartWriter, "complete", complete)
    return failed


@pytest.mark.parametrize("fmt,victim", [("torch", "iter_0000002/optim.pt"), ("torch_dcp", "iter_0000002/dcp/__0_0")])
def test_failed_upload_keeps_the_previous_checkpoint_and_leaves_nothing(s3, monkeypatch, fmt, victim):
    s3_server, url = s3
    failed = _fail_uploads_of(monkeypatch, victim)
    with pytest.raises(InputError, match=r"cannot write checkpoint iteration 2 \(.*injected upload failure.*"
                                         r"the previous checkpoint is kept"):
        _run(max_steps=3, ckpt_format=fmt, save=url, save_interval=1)
    assert failed
    assert _tracker(s3_server, url) == "1\n"
    keys = _keys(s3_server, url)
    assert keys and all(k.startswith(("iter_0000001/", "latest_")) for k in keys), keys
    assert not _uploads(s3_server)
    monkeypatch.undo()
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    assert ckpt.load_checkpoint(url, 0).iteration == 1


def test_a_killed_saves_objects_are_never_loaded_and_are_replaced(s3):
    """A save killed midway leaves objects under an iteration no tracker names (no rename on S3)."""
    s3_server, url = s3
    _run(max_steps=1, save=url)
    key = url.split("/", 3)[3]
    c = s3_server.client()
    c.put_object(Bucket=s3_server.bucket, Key=f"{key}/iter_0000002/model.pt", Body=b"half of a model")
    c.put_object(Bucket=s3_server.bucket, Key=f"{key}/iter_0000002/loader_rank007.pt", Body=b"from a bigger run")
    c.create_multipart_upload(Bucket=s3_server.bucket, Key=f"{key}/iter_0000002/optim.pt")
    assert ckpt.load_checkpoint(url, 0).iteration == 1
    res, _ = _run(max_steps=2, save=url, load=url)
    assert res.iteration == 2 and _tracker(s3_server, url) == "2\n"
    assert _keys(s3_server, url) == sorted(
        [ckpt.TRACKER] + [f"iter_000000{i}/{n}" for i in (1, 2)
                          for n in ("loader_rank000.pt", "model.pt", "optim.pt", "rng_rank000.pt", "state.json")])
    assert not _uploads(s3_server)
    assert ckpt.load_checkpoint(url, 0).iteration == 2


def test_no_checkpoint_under_the_prefix_starts_from_scratch(s3):
    s3_server, url = s3
    note = ckpt.no_checkpoint_note(url)
    assert note.startswith(f"--load {url}: no object under this prefix")
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=url.split("/", 3)[3] + "/iter_0000005/model.pt", Body=b"x")
    assert "starting from scratch" in ckpt.no_checkpoint_note(url)  # a killed save only: nothing complete


def _cli(*argv: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmtrain.cli", *argv], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)})


def test_bad_endpoint_bucket_or_keys_are_one_line_exit_2_before_training(s3_server, tmp_path_factory):
    from loader_helpers import make_records, write_shards

    shards = write_shards(tmp_path_factory.mktemp("sh") / "shards", make_records(4, seed=1, max_images=1))
    tmp_path = tmp_path_factory.mktemp("cwd")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    good = {**base, **s3_server.env()}
    run = ["run", "--device", "cpu", "--shards", str(shards), "--model", "tiny", "--max-steps", "1"]
    cases = [
        (good, ["--save", "s3://no-such-bucket/ck"], "bucket 'no-such-bucket' does not exist"),
        (good, ["--load", "s3://no-such-bucket/ck"], "bucket 'no-such-bucket' does not exist"),
        ({**good, "AWS_SECRET_ACCESS_KEY": "wrong"}, ["--save", f"s3://{s3_server.bucket}/ck"], "AWS_ACCESS_KEY_ID"),
        ({**good, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, ["--save", f"s3://{s3_server.bucket}/ck"],
         "AWS_ENDPOINT_URL"),
    ]
    for env, flag, says in cases:
        p = _cli(*run, *flag, env=env, cwd=tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, (flag, p.stderr[-2000:])
        assert lines[0].startswith(f"error: {flag[1]}: ") and says in lines[0], lines[0]
        assert "iteration" not in p.stdout
    assert not list(tmp_path.iterdir())  # nothing written locally (no 's3:' folder)


def test_export_from_s3_gives_the_source_tensors(s3, tmp_path):
    pytest.importorskip("transformers")
    from hf_tiny import save_tiny
    from loader_helpers import make_records, write_shards
    from safetensors.torch import load_file

    from mmtrain.export import export

    _, url = s3
    shards = write_shards(tmp_path / "shards", make_records(6, seed=5, max_images=1, sizes=((112, 112),)))
    src = save_tiny(tmp_path / "src", "qwen2_vl")
    train(TrainArgs(shards=[str(shards)], model=str(src), seq_len=512, global_batch_size=2, max_steps=0,
                    device="cpu", num_workers=0, save=url), out=io.StringIO())
    it, out = export(url, tmp_path / "out")
    assert it == 0
    a, b = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name


def test_doctor_checks_the_bucket(s3):
    from mmtrain.doctor import DoctorArgs, check_save

    s3_server, url = s3
    ok = list(check_save(DoctorArgs(save=url), None))
    assert [(r.status, r.detail) for r in ok] == [("ok", f"{url}: reachable and writable (object storage)")]
    bad = list(check_save(DoctorArgs(save="s3://no-such-bucket/ck"), None))
    assert bad[0].status == "FAIL" and "bucket 'no-such-bucket' does not exist" in bad[0].detail
    assert _keys(s3_server, url) == []  # the probe object is gone


@pytest.mark.slow  # one torchrun of 2 interpreters importing torch
def test_two_ranks_fsdp2_write_a_sharded_checkpoint_to_s3_that_one_process_resumes(s3, tmp_path):
    """Under torchrun (2 CPU ranks, gloo, FSDP2): every rank uploads its own DCP shard, rank 0 commits once
    both are complete; one process resumes from the url with the uninterrupted losses."""
    from test_mmtrain_torchrun import torchrun

    s3_server, url = s3
    (two,) = torchrun(2, [dict(fsdp=True, max_steps=4, save=url, exit_interval=2)], tmp_path)
    assert sorted(two) == [1, 2] and _tracker(s3_server, url) == "2\n"
    keys = _keys(s3_server, url)
    assert [k for k in keys if k.startswith("iter_0000002/dcp/")] == [
        "iter_0000002/dcp/.metadata", "iter_0000002/dcp/__0_0.distcp", "iter_0000002/dcp/__1_0.distcp"]
    assert {"iter_0000002/loader_rank001.pt", "iter_0000002/rng_rank001.pt", "iter_0000002/state.json"} <= set(keys)
    assert not _uploads(s3_server)
    full, _ = _run(max_steps=4, fsdp=True)
    on1, _ = _run(max_steps=4, fsdp=True, load=url)
    for it in (1, 2):
        assert two[it] == pytest.approx(full.losses[it], abs=1e-6)
    for it in (3, 4):
        assert on1.losses[it] == pytest.approx(full.losses[it], abs=1e-6)


def test_dcp_reads_are_blocks_served_in_order_and_exact():
    """The DCP reader's ranged reads: small items beside each other cost one request, each read returns
    exactly its bytes, reading on doubles the block, a jump back fetches a first-size block again."""
    from mmtrain.dcp_storage import READAHEAD, _Readahead

    data = bytes(range(256)) * ((2 * READAHEAD) // 256 + 8)
    calls = []

    class F:
        def read_at(self, n, off):
            calls.append((n, off))
            return data[off:off + n]

    r = _Readahead(F())
    assert r.read_at(10, 0) == data[:10] and r.read_at(100, 50) == data[50:150]
    assert r.read_at(7, READAHEAD - 7) == data[READAHEAD - 7:READAHEAD]
    assert calls == [(READAHEAD, 0)]
    assert r.read_at(20, READAHEAD - 10) == data[READAHEAD - 10:READAHEAD + 10]
    assert r.read_at(5, 3) == data[3:8]  # behind the block now: fetched again
    big = READAHEAD + 100
    assert r.read_at(big, 1) == data[1:1 + big]
    assert calls == [(READAHEAD, 0), (2 * READAHEAD, READAHEAD - 10), (READAHEAD, 3), (big, 1)]


@pytest.mark.parametrize("kw,msg", [
    (dict(save_hf="s3://b/hf"), "--save-hf s3://b/hf: writes local files"),
    (dict(tensorboard_dir="s3://b/tb"), "--tensorboard-dir s3://b/tb: writes local files"),
    (dict(save="s3://b/ck", profile=True), "--profile with --save on object storage needs --tensorboard-dir"),
])
def test_outputs_that_stay_local_refuse_a_url(kw, msg):
    from mmtrain.args import validate

    with pytest.raises(InputError, match=msg):
        validate(_args(**kw), 1)
    validate(_args(save="s3://b/ck", load="s3://b/ck"), 1)  # checkpoints themselves are fine
