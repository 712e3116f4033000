"""One writer per output on object storage (a lease on PREFIX/.mmdata-shard.lock made with conditional
writes), against moto's real S3 s3_server; and S3 inputs staged for the fast reader name their URL in errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import orjson
import pytest
from test_shard_writer import make_set

from mmdata import storage
from mmdata.errors import InputError
from mmdata.format import names
from mmdata.format.lock import hold_output_lock
from mmdata.storage.base import StorageError
from mmdata.storage.s3lease import LEASE_ENV
from mmdata.storage.staging import STAGE_PREFIX, _host, local_copies, sweep_dead_copies

MMDATA = [sys.executable, "-m", "mmdata.cli"]
HOLDER = textwrap.dedent("""
    import sys, time
    from mmdata.errors import MMDataError
    from mmdata.format.lock import hold_output_lock
    try:
        with hold_output_lock(sys.argv[1]):
            print("held", flush=True)
            time.sleep(60)
    except MMDataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
""")


@pytest.fixture
def s3env(s3_server, monkeypatch):
    s3_server.use(monkeypatch)
    monkeypatch.delenv(LEASE_ENV, raising=False)
    return s3_server


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("lockset"))


def _holder(s3_server, url: str, lease_s: str | None = None) -> subprocess.Popen:
    """Another process holding the lock of ``url`` (started, and seen to hold it, on return)."""
    env = dict(os.environ, **s3_server.env())
    if lease_s:
        env[LEASE_ENV] = lease_s
    p = subprocess.Popen([sys.executable, "-c", HOLDER, url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held", p.stderr.read()
    return p


def _lock_body(s3_server, key: str) -> dict:
    return orjson.loads(s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read())


def _exists(s3_server, key: str) -> bool:
    return storage.exists(f"s3://{s3_server.bucket}/{key}")


def test_second_shard_run_is_refused_naming_the_holder(data, s3env):
    src, img = data
    url = f"s3://{s3env.bucket}/lock/busy"
    holder = _holder(s3env, url)
    try:
        body = _lock_body(s3env, "lock/busy/" + names.LOCK)
        assert body["pid"] == holder.pid and body["what"] == "mmdata shard" and body["lease_s"] == 60
        p = subprocess.run([*MMDATA, "shard", str(src), "--images", str(img), "--out", url, "--records-per-shard", "7",
                            "-q"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2
        assert re.fullmatch(
            rf"error: {url}: another `mmdata shard` is writing here \(host {re.escape(body['host'])}, pid {holder.pid}, "
            rf"since \S+Z\); its lease on \.mmdata-shard\.lock ends at \S+Z \(in \d+ s\) unless renewed: wait for it "
            r"to finish or choose another --out\n", p.stderr), p.stderr
        assert storage.listdir(url) == [names.LOCK]  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGTERM)  # SIGTERM unwinds the holder: it removes its lock at once
        holder.wait(30)
    assert holder.returncode == 128 + signal.SIGTERM
    assert not _exists(s3env, "lock/busy/" + names.LOCK)


def test_lock_gone_after_a_normal_run_and_after_a_user_error(data, s3env):
    src, img = data
    url = f"s3://{s3env.bucket}/lock/normal"
    args = ["--images", str(img), "--out", url, "--records-per-shard", "7", "-q"]
    p = subprocess.run([*MMDATA, "shard", str(src), *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert names.LOCK not in storage.listdir(url) and "manifest.json" in storage.listdir(url)
    bad = src.parent / "broken.json"
    bad.write_bytes(src.read_bytes()[:-40])
    p = subprocess.run([*MMDATA, "shard", str(bad), *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "invalid JSON" in p.stderr
    assert names.LOCK not in storage.listdir(url)


def test_sigkilled_holder_is_taken_over_once_its_lease_ends(s3env, capfd):
    url = f"s3://{s3env.bucket}/lock/killed"
    holder = _holder(s3env, url, lease_s="2")
    holder.kill()
    holder.wait(10)
    with pytest.raises(StorageError, match=rf"pid {holder.pid}, .*ends at .*unless renewed"):
        with hold_output_lock(url):
            pass
    deadline = time.monotonic() + 30
    while True:  # the lease (2 s + 1 s for whole-second clocks) runs out on the s3_server's clock
        try:
            with hold_output_lock(url):
                assert _lock_body(s3env, "lock/killed/" + names.LOCK)["pid"] == os.getpid()
            break
        except StorageError:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert "taking over the lock of host" in capfd.readouterr().err
    assert not _exists(s3env, "lock/killed/" + names.LOCK)


def test_an_expired_lease_is_taken_over_and_two_takers_cannot_both_win(s3env):
    url = f"s3://{s3env.bucket}/lock/expired"
    key = "lock/expired/" + names.LOCK
    c = s3env.client()
    c.put_object(Bucket=s3env.bucket, Key=key, Body=orjson.dumps(
        {"mmdata_lock": 1, "what": "mmdata shard", "host": "gone", "pid": 1, "started": "x", "lease_s": 0.1,
         "token": "old"}))
    time.sleep(2.2)  # past LastModified + 0.1 s + 1 s of clock slack
    a = storage.hold_lease(storage.join(url, names.LOCK), "a")
    b = storage.hold_lease(storage.join(url, names.LOCK), "b")
    stale = b._read(b.client)  # b sees the expired lease too ...
    assert stale.expired and stale.body["token"] == "old"
    with a:  # ... but a takes it first: b's delete and create, both conditional, fail
        with pytest.raises(Exception, match="PreconditionFailed"):
            b.client.delete_object(Bucket=s3env.bucket, Key=key, IfMatch=stale.etag)
        assert b._create() is False
        with pytest.raises(StorageError, match="another `a` is writing here"):
            b.acquire()
        assert _lock_body(s3env, key)["token"] == a.token
    assert not _exists(s3env, key)


def test_a_holder_that_loses_its_lease_stops_with_one_line(s3env):
    url = f"s3://{s3env.bucket}/lock/lost"
    holder = _holder(s3env, url, lease_s="6")
    s3env.client().put_object(Bucket=s3env.bucket, Key="lock/lost/" + names.LOCK, Body=b"{}")  # someone else's
    holder.wait(30)  # renewed every 1 s: the next renewal finds the object replaced
    err = holder.stderr.read()
    assert holder.returncode == 2
    assert err == (f"error: {url}/{names.LOCK}: this run lost its lock: it was replaced or removed by someone else; "
                   "it stopped writing: check the other run, then rerun (with --resume where the command has it)\n")
    assert _exists(s3env, "lock/lost/" + names.LOCK)  # not ours any more: left alone


def test_an_object_that_is_not_a_lock_is_refused(s3env):
    url = f"s3://{s3env.bucket}/lock/notalock"
    s3env.client().put_object(Bucket=s3env.bucket, Key="lock/notalock/" + names.LOCK, Body=b"my notes")
    with pytest.raises(StorageError, match="is not an mmdata lock: if no run writes this prefix, remove it"):
        with hold_output_lock(url):
            pass


def _no_conditional_writes(mode: str):
    """A botocore hook: conditional PUT/DELETE answered 501 NotImplemented, or the header dropped."""
    from botocore.awsrequest import AWSResponse

    def hook(params, **kw):
        h = params.get("headers", {})
        cond = [k for k in ("If-None-Match", "If-Match") if k in h]
        if not cond:
            return None
        if mode == "ignored":
            for k in cond:
                del h[k]
            return None
        return (AWSResponse(params["url"], 501, {}, None),
                {"Error": {"Code": "NotImplemented", "Message": "A header you provided implies functionality "
                                                                "that is not implemented"},
                 "ResponseMetadata": {"HTTPStatusCode": 501}})

    return hook


@pytest.mark.parametrize("mode", ["501", "ignored"])
def test_an_endpoint_without_conditional_writes_gets_a_best_effort_lock_and_a_warning(s3env, capfd, mode):
    url = f"s3://{s3env.bucket}/lock/nocond-{mode}"
    first = storage.hold_lease(storage.join(url, names.LOCK), "mmdata shard")
    second = storage.hold_lease(storage.join(url, names.LOCK), "mmdata shard")
    hook = _no_conditional_writes(mode)
    clients = {id(c): c for c in (first.client, first.beat_client, second.client, second.beat_client)}
    for c in clients.values():
        c.meta.events.register("before-call.s3", hook)
    try:
        with first:
            assert first.conditional is False
            with pytest.raises(StorageError, match="another `mmdata shard` is writing here"):
                second.acquire()  # a second run that starts later is still refused
        assert not _exists(s3env, f"lock/nocond-{mode}/{names.LOCK}")
    finally:
        for c in clients.values():
            c.meta.events.unregister("before-call.s3", hook)
    why = "NotImplemented" if mode == "501" else "If-None-Match was ignored"
    assert (f"warning: {url}/{names.LOCK}: this S3 endpoint does not support conditional writes ({why}); the lock "
            "is best-effort: two runs started at the same moment are not kept apart\n") in capfd.readouterr().err


def test_clean_to_s3_takes_a_lock_beside_out(s3env, tmp_path):
    src, img = make_set(tmp_path)
    out = f"s3://{s3env.bucket}/lock/clean/out.jsonl"
    lock = f"s3://{s3env.bucket}/lock/clean/.out.jsonl.mmdata-clean.lock"
    args = ["clean", "llava", str(src), "--images", str(img), "--out", out, "-q", "--workers", "1"]
    with storage.hold_lease(lock, "mmdata clean"):
        p = subprocess.run([*MMDATA, *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2
        assert p.stderr.startswith(f"error: s3://{s3env.bucket}/lock/clean: another `mmdata clean` is writing here "
                                   f"(host "), p.stderr
        assert "its lease on .out.jsonl.mmdata-clean.lock ends at" in p.stderr
    assert not storage.exists(out)
    p = subprocess.run([*MMDATA, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert storage.exists(out) and not storage.exists(lock)


# -- S3 inputs copied for the fast reader: errors name the URL; the copy never outlives the run ---------------

BROKEN = b'[\n {"id": "a", "conversations": []},\n {"id": oops}\n]\n'


@pytest.mark.parametrize("cmd", [["clean", "llava"], ["clean", "coco"]])
def test_parse_errors_of_an_s3_input_name_the_url_and_leave_no_copy(s3env, tmp_path, cmd):
    key = f"in/broken-{cmd[1]}.json"
    s3env.client().put_object(Bucket=s3env.bucket, Key=key, Body=BROKEN)
    (tmp_path / "img").mkdir()
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    p = subprocess.run([*MMDATA, *cmd, f"s3://{s3env.bucket}/{key}", "--images", str(tmp_path / "img"),
                        "--out", str(tmp_path / "o.jsonl"), "-q"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, TMPDIR=str(tmp)))
    assert p.returncode == 2
    where = "3:9: invalid JSON: Expecting value" if cmd[1] == "llava" else "3:9: invalid JSON: "
    assert p.stderr.startswith(f"error: s3://{s3env.bucket}/{key}:{where}"), p.stderr
    assert list(tmp.iterdir()) == []


def test_shard_parse_errors_of_an_s3_input_name_the_url(s3env, tmp_path):
    from mmdata.shard.writer import write_shards

    s3env.client().put_object(Bucket=s3env.bucket, Key="in/broken-shard.json", Body=BROKEN)
    (tmp_path / "img").mkdir()
    with pytest.raises(InputError) as e:
        write_shards([f"s3://{s3env.bucket}/in/broken-shard.json"], tmp_path / "img", tmp_path / "out", workers=1)
    assert str(e.value) == f"s3://{s3env.bucket}/in/broken-shard.json:3:9: invalid JSON: Expecting value"


def test_local_copies_map_errors_and_remove_the_copy_on_every_exit(s3env, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    url = f"s3://{s3env.bucket}/in/copy.json"
    s3env.client().put_object(Bucket=s3env.bucket, Key="in/copy.json", Body=b"[]")
    for exc in (InputError, OSError, KeyboardInterrupt):
        with pytest.raises(exc) as e:
            with local_copies([url, "local.json"]) as (copy, local):
                assert copy.name == "copy.json" and copy.read_bytes() == b"[]" and local == "local.json"
                if exc is InputError:
                    raise InputError(copy, "invalid JSON: x", line=2, col=5)
                if exc is OSError:
                    raise OSError(5, "Input/output error", str(copy))
                raise KeyboardInterrupt
        if exc is InputError:
            assert str(e.value) == f"{url}:2:5: invalid JSON: x"
        if exc is OSError:
            assert e.value.filename == url
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=rf"^s3://{s3env.bucket}/in/nope.json: no such object$"):
        with local_copies([f"s3://{s3env.bucket}/in/nope.json"]):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_killed_runs_copies_are_removed_by_the_next_run(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f"{STAGE_PREFIX}{_host()}-{dead.pid}-abc"
    live = tmp_path / f"{STAGE_PREFIX}{_host()}-{os.getpid()}-abc"
    other = tmp_path / f"{STAGE_PREFIX}otherhost-{dead.pid}-abc"  # another node's (a shared TMPDIR): not ours to judge
    for d in (gone, live, other):
        (d / "0").mkdir(parents=True)
        (d / "0" / "x.json").write_bytes(b"[]")
    assert sweep_dead_copies(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


# -- the local lock ------------------------------------------------------------------------------------------

def test_a_local_planned_run_keeps_its_lock_while_it_clears_the_folder(data, tmp_path):
    from mmdata.shard.writer import write_shards

    src, img = data
    out = tmp_path / "planned"
    seen = []
    write_shards([src], img, out, records_per_shard=7, workers=1,
                 progress=lambda *a: seen.append((out / names.LOCK).exists()))
    assert seen and all(seen)  # before: the run's clearing of OUTPUTS removed it, letting a second writer in
    assert not (out / names.LOCK).exists()


def test_a_file_under_the_lock_name_that_is_not_a_lock_is_never_truncated(data, tmp_path):
    from mmdata.shard.writer import write_shards

    src, img = data
    out = tmp_path / "o"
    out.mkdir()
    (out / names.LOCK).write_text('{"my": "notes"}')
    with pytest.raises(InputError, match="is not an mmdata lock file: move it out of --out"):
        write_shards([src], img, out, workers=1)
    assert (out / names.LOCK).read_text() == '{"my": "notes"}'
