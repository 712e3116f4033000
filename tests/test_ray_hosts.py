"""`mmdata shard --engine ray` on a Ray cluster of two "hosts": Linux network namespaces with their own
IPs on a bridge (scripts/ray_netns.sh), started the way a user starts a real cluster (`ray start --head`
on A, `ray start --address A:6379` on B, each with its own HOME and temp dir), token authentication on,
node B with no AWS_* variables of its own, the driver on A. Checked: the bytes of --engine local, tasks
really run on B, S3 input/images/output with nothing on a shared disk, and B's raylet SIGKILLed
mid-run (its work redone on A, no sample lost or doubled).

Needs root, iproute2 and a kernel that lets this container make namespaces, veths and a bridge;
skipped with the reason otherwise. 51 s on a loaded 2-core box (at the ~60 s line, and the kill is timed on a
busy machine), so it runs only with
MMDATA_RAY_HOSTS=1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mmdata.format import names
from test_shard_writer import make_set, tree_bytes

pytest.importorskip("ray")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MMDATA_RAY_HOSTS") != "1",
                       reason="multi-host Ray test (network namespaces, ~55 s on 2 cores): set MMDATA_RAY_HOSTS=1 to run it"),
]

NETNS = Path(__file__).resolve().parent.parent / "scripts" / "ray_netns.sh"
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
MMDATA = [sys.executable, "-m", "mmdata.cli"]
PORT = 6379
N_PER_SHARD = 5


def _netns(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(NETNS), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


class Hosts:
    """The namespaces (hosts a, b), their IPs and per-host HOME / Ray temp dir, and how to run in them."""

    def __init__(self, prefix: str, net: str, root: Path):
        self.prefix, self.net, self.root = prefix, net, root
        self.ip = {"a": f"{net}.1", "b": f"{net}.2"}
        self.bridge = f"{net}.254"

    def home(self, h: str) -> Path:
        p = self.root / h / "home"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def env(self, h: str, **extra: str) -> dict[str, str]:
        """A host's own environment: no AWS_*, no RAY_* from this process, its own HOME."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home(h)), "LANG": "C.UTF-8",
                **extra}

    def cmd(self, h: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", f"{self.prefix}-{h}", *argv]

    def run(self, h: str, argv: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(h, argv), env=env, capture_output=True, text=True, timeout=timeout)

    def pids(self, h: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", f"{self.prefix}-{h}"], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def procs(self, h: str) -> dict[int, str]:
        """pid -> command line (or process title: Ray workers show ``ray::_apply`` while running a task)."""
        got = {}
        for pid in self.pids(h):
            try:
                got[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
        return got


@pytest.fixture(scope="module")
def hosts():
    try:
        check = _netns("check")
    except (OSError, subprocess.TimeoutExpired) as e:  # no bash, or a sandbox that hangs `ip netns add`
        pytest.skip(f"cannot make network namespaces here: {e}")
    if check.returncode != 0:
        pytest.skip(f"cannot make network namespaces here: {check.stderr.strip() or check.stdout.strip()}")
    prefix, net = f"mt{os.getpid() % 100000}", f"10.78.{os.getpid() % 250}"
    names = {"MMNET_PREFIX": prefix, "MMNET_NET": net}
    root = Path(tempfile.mkdtemp(prefix="mmr", dir="/tmp"))  # short: Ray's unix sockets live under it
    up = _netns("up", "a", "b", env=names)
    try:
        assert up.returncode == 0, up.stderr
        yield Hosts(prefix, net, root)
    finally:
        _netns("down", "a", "b", env=names)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(hosts):
    """Head on A (token generated there, as `ray get-auth-token --generate`), B joined with the token
    passed as a user would (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN); each node 1 CPU, its own temp dir."""
    a, b = hosts.ip["a"], hosts.ip["b"]
    common = ["--num-cpus", "1", "--object-store-memory", str(80 << 20), "--disable-usage-stats"]
    gen = hosts.run("a", [*RAY, "get-auth-token", "--generate"], hosts.env("a"))
    assert gen.returncode == 0, gen.stderr
    token = (hosts.home("a") / ".ray" / "auth_token").read_text().strip()
    head = hosts.run("a", [*RAY, "start", "--head", "--node-ip-address", a, "--port", str(PORT),
                           "--include-dashboard=false", "--temp-dir", str(hosts.root / "a" / "ray"), *common],
                     hosts.env("a"))
    assert head.returncode == 0, head.stdout + head.stderr
    worker = hosts.run("b", [*RAY, "start", "--address", f"{a}:{PORT}", "--node-ip-address", b,
                             "--temp-dir", str(hosts.root / "b" / "ray"), *common],
                       hosts.env("b", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
    assert worker.returncode == 0, worker.stdout + worker.stderr
    wait = hosts.run("a", [sys.executable, "-c", "import ray, sys; from mmdata.engine.ray_engine import "
                           "RayEngine, wait_for_nodes; e = RayEngine.connect(sys.argv[1]); wait_for_nodes(2); "
                           "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))",
                           f"{a}:{PORT}"], hosts.env("a"))
    assert wait.returncode == 0 and f"'{b}'" in wait.stdout, wait.stdout + wait.stderr
    return f"{a}:{PORT}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mmdata.shard.writer import write_shards

    root = tmp_path_factory.mktemp("rayhosts")
    src, img = make_set(root, n=40)
    local = root / "local"
    write_shards([src], img, local, records_per_shard=N_PER_SHARD, workers=1)
    return src, img, local


def _tasks_on(stderr: str, ip: str) -> int:
    """Tasks the driver saw finish on node ``ip`` (its ``ray: N tasks on K node(s) (ip: n, ...)`` line)."""
    m = re.search(r"ray: \d+ tasks on \d+ node\(s\) \((.*)\)", stderr)
    assert m, stderr
    return dict((k, int(v)) for k, v in (p.split(": ") for p in m.group(1).split(", "))).get(ip, 0)


def _shard(hosts: Hosts, address: str, inputs: str, images: str, out: str) -> list[str]:
    """The driver's command line, run on host A."""
    return hosts.cmd("a", [*MMDATA, "shard", inputs, "--images", images, "--out", out, "--records-per-shard",
                           str(N_PER_SHARD), "--engine", "ray", "--ray-address", address])


def test_two_hosts_give_the_local_bytes_and_b_does_work(hosts, cluster, data, tmp_path):
    src, img, local = data
    out = tmp_path / "ray"
    p = subprocess.run(_shard(hosts, cluster, str(src), str(img), str(out)), env=hosts.env("a"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert tree_bytes(out) == tree_bytes(local)
    assert _tasks_on(p.stderr, hosts.ip["b"]) > 0, p.stderr


def _upload_tree(server, prefix: str, root: Path) -> None:
    c = server.client()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            c.put_object(Bucket=server.bucket, Key=f"{prefix}/{f.relative_to(root)}", Body=f.read_bytes())


def test_s3_in_and_out_with_the_driver_credentials_only(hosts, cluster, data, tmp_path):
    """Records, images and shards all on S3 (the server on the bridge IP): nothing depends on a shared
    disk, and B, started with no AWS_* at all, writes its shards with the driver's credentials."""
    from s3_server import moto_s3

    src, img, local = data
    with moto_s3(host=hosts.bridge) as server:
        _upload_tree(server, "in/img", img)
        server.client().put_object(Bucket=server.bucket, Key="in/clean.json", Body=src.read_bytes())
        base = f"s3://{server.bucket}"
        p = subprocess.run(_shard(hosts, cluster, f"{base}/in/clean.json", f"{base}/in/img", f"{base}/out"),
                           env=hosts.env("a", **server.env()), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        c = server.client()
        keys = [o["Key"] for o in c.list_objects_v2(Bucket=server.bucket, Prefix="out/").get("Contents", [])]
        got = {k.removeprefix("out/"): c.get_object(Bucket=server.bucket, Key=k)["Body"].read() for k in keys}
    assert got == tree_bytes(local)
    assert _tasks_on(p.stderr, hosts.ip["b"]) > 0, p.stderr


def test_b_raylet_killed_mid_run_is_redone_on_a(hosts, cluster, data, tmp_path):
    """SIGKILL node B's raylet while B runs a task: the run finishes on A with the local bytes. Last in
    this file: B is gone afterwards."""
    src, img, local = data
    out = tmp_path / "killed"
    driver = subprocess.Popen(_shard(hosts, cluster, str(src), str(img), str(out)), env=hosts.env("a"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and driver.poll() is None and time.monotonic() < deadline:
        procs = hosts.procs("b")
        staged = out / names.STAGING
        started = len(list(staged.glob("job-*.done.json"))) if staged.exists() else 0
        # Some jobs finished already (their parts wait in staging until every job is done) and a task running on B right now: kill B's raylet.
        if started >= 2 and any(cmd.startswith("ray::_apply") for cmd in procs.values()):
            killed = next(pid for pid, cmd in procs.items() if "/raylet/raylet " in cmd)
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    _, stderr = driver.communicate(timeout=300)
    assert killed is not None, "no task ran on B before the run ended: nothing was killed\n" + stderr
    assert driver.returncode == 0, stderr
    assert tree_bytes(out) == tree_bytes(local)
    assert _tasks_on(stderr, hosts.ip["a"]) > 0, stderr
