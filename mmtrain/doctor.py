"""`mmtrain doctor`: what breaks a run before it starts, one line per check (`ok` / `warn` / `FAIL` and
the fix), exit 1 on any FAIL. Software versions that must fit together (Python, torch, torch_npu, CANN,
the CUDA driver), the devices each local rank would see, the distributed backend, the multi-node
launcher, the shards, the --save folder, and whether the model fits in device memory. A check that
cannot run says why; none of them crashes the command."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtrain.preflight import checkpoint_bytes, free_bytes, human

OK, WARN, FAIL = "ok", "warn", "FAIL"

# torch_npu wheel version -> the CANN release it was built for (Ascend/pytorch COMPATIBILITY.md and
# the Ascend Extension for PyTorch release notes). A wheel X.Y.Z[.postN] needs torch X.Y.Z exactly.
TORCH_NPU_CANN = {
    "2.1.0.post3": "8.0.RC1", "2.2.0": "8.0.RC1",
    "2.1.0.post6": "8.0.RC2", "2.2.0.post2": "8.0.RC2", "2.3.1": "8.0.RC2",
    "2.1.0.post8": "8.0.RC3", "2.3.1.post2": "8.0.RC3", "2.4.0": "8.0.RC3",
    "2.1.0.post10": "8.0.0", "2.3.1.post4": "8.0.0", "2.4.0.post2": "8.0.0",
    "2.1.0.post12": "8.1.RC1", "2.3.1.post6": "8.1.RC1", "2.4.0.post4": "8.1.RC1", "2.5.1": "8.1.RC1",
    "2.1.0.post13": "8.2.RC1", "2.5.1.post1": "8.2.RC1", "2.6.0": "8.2.RC1",
    "2.1.0.post17": "8.3.RC1", "2.6.0.post3": "8.3.RC1", "2.7.1": "8.3.RC1", "2.8.0": "8.3.RC1",
    "2.6.0.post5": "8.5.0", "2.7.1.post2": "8.5.0", "2.8.0.post2": "8.5.0", "2.9.0": "8.5.0",
    "2.7.1.post4": "9.0.0", "2.8.0.post4": "9.0.0", "2.9.0.post2": "9.0.0", "2.10.0": "9.0.0",
    "2.7.1.post8": "9.1.0", "2.9.0.post6": "9.1.0", "2.10.0.post4": "9.1.0", "2.11.0": "9.1.0", "2.12.0": "9.1.0",
}
# Oldest Linux driver for each CUDA major version (NVIDIA's CUDA toolkit release notes, table 3).
CUDA_MIN_DRIVER = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 65, 6)}
CANN_HOMES = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann")
MIN_PYTHON = (3, 10)
SSH_TIMEOUT_S = 8


@dataclass
class Result:
    """One check's verdict: status, what was found, and what to do about it."""

    status: str
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        s = f"{self.status:<4}  {self.name:<12} {self.detail}"
        return s + (f"  -> {self.fix}" if self.fix else "")


@dataclass
class DoctorArgs:
    """The run to check: `mmtrain run`'s shape flags plus the launch (nodes, ranks per node)."""

    shards: list[str] = field(default_factory=list)
    save: str | None = None
    nnodes: int = 1
    nproc_per_node: int | None = None
    hostfile: str | None = None
    model: str = "tiny"
    tokenizer: str | None = None
    seq_len: int = 2048
    micro_batch_size: int = 1
    recompute_granularity: str | None = None
    recompute_method: str | None = None
    recompute_num_layers: int = 0
    fsdp: bool = False
    bf16: bool = False
    device: str = "auto"
    timeout: float = 30.0
    image_share: float = 0.5  # share of a row's tokens that are image tokens, when no shards tell


@dataclass
class Env:
    """What earlier checks learned and later ones need."""

    kind: str = "cpu"  # npu | cuda | cpu
    devices: int = 0
    free_mem: list[int] = field(default_factory=list)  # per local rank, bytes
    image_share: float | None = None


# ---------------------------------------------------------------------------------------- versions


def _version(dist_name: str) -> str | None:
    """An installed distribution's version from its metadata (no import), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist_name)
    except PackageNotFoundError:
        return None


def check_python(a: DoctorArgs, env: Env) -> Iterator[Result]:
    v = sys.version_info
    ok = (v.major, v.minor) >= MIN_PYTHON
    yield Result(OK if ok else FAIL, "python", f"{v.major}.{v.minor}.{v.micro} ({sys.executable})",
                 "" if ok else f"use Python >= {'.'.join(map(str, MIN_PYTHON))}")


def check_torch(a: DoctorArgs, env: Env) -> Iterator[Result]:
    try:
        import torch
    except Exception as e:
        yield Result(FAIL, "torch", f"cannot import torch: {e}", "pip install torch (the CPU wheel on NPU hosts)")
        return
    yield Result(OK, "torch", f"{torch.__version__} (cuda {torch.version.cuda or 'none'})")


def _base(v: str) -> str:
    """'2.6.0.post3' / '2.6.0+cpu' -> '2.6.0'."""
    return re.match(r"\d+\.\d+\.\d+", v).group(0) if re.match(r"\d+\.\d+\.\d+", v) else v


def _cann_key(v: str) -> tuple:
    """Order CANN versions: 8.0.RC2 < 8.0.RC3 < 8.0.0 < 8.1.RC1; suffixes like .beta1 / .20 ignored."""
    m = re.match(r"(\d+)\.(\d+)\.(RC(\d+)|(\d+))", v, re.I)
    if not m:
        return (0,)
    rc = m.group(4)
    return (int(m.group(1)), int(m.group(2)), 0 if rc else 1, int(rc or m.group(5)))


def npu_stack_verdict(torch_v: str, npu_v: str, cann_v: str | None) -> list[Result]:
    """torch_npu against torch (same X.Y.Z) and against CANN (the release it was built for)."""
    out = []
    if _base(torch_v) != _base(npu_v):
        out.append(Result(FAIL, "torch_npu", f"{npu_v} is built for torch {_base(npu_v)}, torch is {torch_v}",
                          f"pip install torch=={_base(npu_v)} (or the torch_npu wheel for torch {_base(torch_v)})"))
    else:
        out.append(Result(OK, "torch_npu", f"{npu_v} matches torch {torch_v}"))
    want = TORCH_NPU_CANN.get(npu_v)
    if cann_v is None:
        out.append(Result(FAIL, "cann", "no CANN toolkit found (ASCEND_TOOLKIT_HOME unset, no version file under "
                                        f"{', '.join(CANN_HOMES)})",
                          "source /usr/local/Ascend/ascend-toolkit/set_env.sh (or install CANN)"))
    elif want is None:
        out.append(Result(WARN, "cann", f"{cann_v}; torch_npu {npu_v} is not in the compatibility table",
                          "check https://gitcode.com/Ascend/pytorch COMPATIBILITY.md for this pair"))
    elif _cann_key(cann_v)[:4] == _cann_key(want)[:4]:
        out.append(Result(OK, "cann", f"{cann_v}, the release torch_npu {npu_v} is built for"))
    elif _cann_key(cann_v) < _cann_key(want):
        out.append(Result(FAIL, "cann", f"{cann_v} is older than {want}, which torch_npu {npu_v} needs",
                          f"install CANN {want} or a torch_npu built for CANN {cann_v}"))
    else:
        out.append(Result(WARN, "cann", f"{cann_v} is newer than {want}, which torch_npu {npu_v} was built for",
                          f"prefer the torch_npu wheel released with CANN {cann_v}"))
    return out


def cann_version(environ: dict[str, str] | None = None) -> tuple[str | None, Path | None]:
    """(version, file it was read from) of the CANN toolkit that set_env.sh points at."""
    environ = os.environ if environ is None else environ
    homes = [environ[k] for k in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH") if environ.get(k)] + list(CANN_HOMES)
    for home in map(Path, homes):
        files = sorted(home.glob("*/ascend_toolkit_install.info")) + [home / "version.info",
                                                                       home / "compiler" / "version.info",
                                                                       home / "runtime" / "version.info"]
        for f in files:
            try:
                m = re.search(r"^version=(\S+)", f.read_text(errors="replace"), re.I | re.M)
            except OSError:
                continue
            if m:
                return m.group(1), f
    return None, None


def check_npu_stack(a: DoctorArgs, env: Env) -> Iterator[Result]:
    npu_v = _version("torch_npu") or _version("torch-npu")
    if npu_v is None:
        yield Result(OK, "torch_npu", "not installed (no NPU use)" if a.device != "npu" else "not installed",
                     "" if a.device != "npu" else "pip install torch_npu matching torch and CANN")
        return
    import torch

    cann, where = cann_version()
    for r in npu_stack_verdict(torch.__version__, npu_v, cann):
        if r.name == "cann" and where is not None:
            r.detail += f" (from {where})"
        yield r


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    p = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                       text=True, timeout=10)
    return p.stdout.strip().splitlines()[0] if p.returncode == 0 and p.stdout.strip() else None


def cuda_verdict(runtime: str, driver: str | None) -> Result:
    """The CUDA runtime torch was built with against the installed driver's minimum version."""
    major = int(runtime.split(".")[0])
    need = CUDA_MIN_DRIVER.get(major)
    if driver is None:
        return Result(WARN, "cuda", f"torch built for CUDA {runtime}; no NVIDIA driver found (nvidia-smi)",
                      "install the NVIDIA driver, or use the CPU wheel of torch on this host")
    have = tuple(int(x) for x in re.findall(r"\d+", driver)[:3])
    if need and have < need:
        return Result(FAIL, "cuda", f"driver {driver} is older than {'.'.join(map(str, need))}, the minimum for "
                                    f"CUDA {runtime}", "update the driver or install torch built for an older CUDA")
    return Result(OK, "cuda", f"runtime {runtime}, driver {driver}")


def check_cuda_stack(a: DoctorArgs, env: Env) -> Iterator[Result]:
    import torch

    if not torch.version.cuda:
        return
    yield cuda_verdict(torch.version.cuda, _nvidia_driver())


# ------------------------------------------------------------------------------ devices and backend


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_devices(a: DoctorArgs, env: Env) -> Iterator[Result]:
    """The card each local rank would get (LOCAL_RANK i -> device i) and its free memory."""
    from mmtrain.accel import detect_device

    try:
        env.kind = detect_device(a.device)
    except ValueError as e:
        yield Result(FAIL, "devices", str(e), "use --device auto, or fix the driver / CANN set-up")
        return
    if env.kind == "cpu":
        n = a.nproc_per_node or 1
        avail = _meminfo_available()
        env.free_mem = [avail // n] * n if avail else []
        yield Result(OK, "devices", f"cpu: {os.cpu_count()} cores, {human(avail) if avail else '?'} memory "
                                    f"available for {n} local rank(s)")
        return
    import torch

    mod = getattr(torch, env.kind)
    env.devices = mod.device_count()
    n = a.nproc_per_node or env.devices
    vis = "ASCEND_RT_VISIBLE_DEVICES" if env.kind == "npu" else "CUDA_VISIBLE_DEVICES"
    parts = []
    for i in range(min(n, env.devices)):
        free, total = mod.mem_get_info(i)
        env.free_mem.append(free)
        parts.append(f"rank {i}: {mod.get_device_name(i)} {human(free)} free of {human(total)}")
    if n > env.devices:
        yield Result(FAIL, "devices", f"--nproc-per-node {n} but {env.devices} {env.kind} device(s) visible "
                                      f"({vis}={os.environ.get(vis, 'unset')})",
                     f"lower --nproc-per-node to {env.devices} or widen {vis}")
    else:
        yield Result(OK, "devices", "; ".join(parts))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _allreduce_child(rank: int, world: int, port: int, backend: str, kind: str, timeout: float, q: Any,
                     parent: int) -> None:
    """One rank of the backend check: init the group, all-reduce ones, report the sum."""
    from datetime import timedelta

    from mmdata.procs import die_with_parent

    die_with_parent(parent)
    try:
        import torch
        import torch.distributed as dist

        dev = torch.device("cpu")
        if kind != "cpu":
            if kind == "npu":
                import torch_npu  # noqa: F401
            dev = torch.device(kind, rank)
            getattr(torch, kind).set_device(dev)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout))
        t = torch.ones(4, device=dev)
        dist.all_reduce(t)
        q.put((rank, float(t[0])))
        dist.destroy_process_group()
    except Exception as e:
        q.put((rank, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))


def check_backend(a: DoctorArgs, env: Env) -> Iterator[Result]:
    """A 2-process all-reduce on this node's backend (1 process when only one card is visible)."""
    import multiprocessing as mp

    from mmtrain.accel import BACKENDS

    backend = BACKENDS[env.kind]
    world = 2 if env.kind == "cpu" or env.devices >= 2 else 1
    ctx = mp.get_context("fork" if env.kind == "cpu" else "spawn")  # no accelerator runtime across fork
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_allreduce_child, args=(r, world, port, backend, env.kind, a.timeout, q, os.getpid()),
                         daemon=True) for r in range(world)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    got = _collect(q, world, a.timeout + 10)
    for p in procs:
        p.join(timeout=1)
        if p.is_alive():
            p.kill()
    took = time.perf_counter() - t0
    errors = [v for v in got.values() if isinstance(v, str)]
    if len(got) < world:
        yield Result(FAIL, "backend", f"{backend} all-reduce of {world} processes did not finish in {a.timeout:.0f} s",
                     "check the network interface (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME / HCCL_IF_IP) and firewall")
    elif errors:
        yield Result(FAIL, "backend", f"{backend}: {errors[0]}", "see the error; for hccl source CANN's set_env.sh")
    elif any(v != world for v in got.values()):
        yield Result(FAIL, "backend", f"{backend} all-reduce gave {sorted(got.values())}, expected {world}")
    else:
        yield Result(OK, "backend", f"{backend} all-reduce across {world} process(es) in {took:.1f} s")


def _collect(q: Any, n: int, timeout: float) -> dict[int, Any]:
    import queue

    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            rank, val = q.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            break
        got[rank] = val
    return got


def _ssh_ok(host: str) -> str | None:
    """None when `ssh host true` works without a password, else why not."""
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT_S}", "-o",
           "StrictHostKeyChecking=accept-new", host, "true"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=SSH_TIMEOUT_S + 5, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "timed out"
    return None if p.returncode == 0 else (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]


def check_launcher(a: DoctorArgs, env: Env) -> Iterator[Result]:
    """Multi-node: pdsh (MindSpeed's launch scripts fan out with it; without it a launch hangs silently)
    and passwordless ssh to every node of --hostfile."""
    if a.nnodes <= 1:
        return
    if shutil.which("pdsh"):
        yield Result(OK, "pdsh", shutil.which("pdsh"))
    else:
        yield Result(FAIL, "pdsh", f"not on PATH; --nnodes {a.nnodes} launches fan out with it",
                     "apt-get install pdsh (or yum install pdsh) on every node")
    if not shutil.which("ssh"):
        yield Result(FAIL, "ssh", "no ssh client", "install openssh-client")
        return
    if not a.hostfile:
        keys = sorted(Path.home().glob(".ssh/id_*[!.pub]"))
        yield Result(WARN, "ssh", f"no --hostfile: nodes not tried ({len(keys)} key(s) in ~/.ssh)",
                     "pass --hostfile FILE (one node per line) to try passwordless ssh to each")
        return
    yield from _check_hosts(a.hostfile, a.nnodes)


def _check_hosts(hostfile: str, nnodes: int) -> Iterator[Result]:
    from concurrent.futures import ThreadPoolExecutor

    try:
        hosts = [ln.split()[0] for ln in Path(hostfile).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except OSError as e:
        yield Result(FAIL, "ssh", f"{hostfile}: {e.strerror or e}", "give a readable --hostfile")
        return
    if len(hosts) < nnodes:
        yield Result(FAIL, "ssh", f"{hostfile} lists {len(hosts)} node(s), --nnodes is {nnodes}", "list every node")
    with ThreadPoolExecutor(max_workers=16) as ex:
        bad = [(h, e) for h, e in zip(hosts, ex.map(_ssh_ok, hosts)) if e]
    if bad:
        yield Result(FAIL, "ssh", f"{len(bad)} of {len(hosts)} node(s) refuse passwordless ssh, e.g. {bad[0][0]}: "
                                  f"{bad[0][1]}", "ssh-copy-id to each node (BatchMode must succeed)")
    else:
        yield Result(OK, "ssh", f"passwordless ssh to all {len(hosts)} node(s)")


# ------------------------------------------------------------------------------------ data and save


def _model_rule(model: str) -> str | None:
    """The shard rule (`mmdata shard --rule`) a --model needs: presets are Qwen2-VL-shaped."""
    p = Path(model)
    if not p.is_dir():
        return "qwen2vl"
    import json

    try:
        mt = json.loads((p / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError):
        return None
    return "qwen2vl" if mt in ("qwen2_vl", "qwen2_5_vl") else None


def quick_verify(folder: Path) -> tuple[list[str], dict]:
    """The format's one folder check (manifest, index rows, every shard present, whole, unreplaced).
    Returns (problem lines, facts); facts (the manifest's options plus per-sample index columns) only
    for a whole folder."""
    from mmdata import storage
    from mmdata.format.check import folder_problems
    from mmdata.format.index import read_table

    problems, man = folder_problems(folder)
    probs = [p.line() for p in problems]
    if probs:
        return probs, {}
    facts = dict(man.get("options", {}))
    idx = read_table(storage.read_bytes(folder / "index.parquet"))
    facts["image_tokens"] = idx.column("image_tokens").to_pylist()
    facts["text_chars"] = idx.column("text_chars").to_pylist()
    if "text_tokens" in idx.column_names:
        facts["text_tokens"] = idx.column("text_tokens").to_pylist()
    return probs, facts


MAX_LISTED = 20  # problem lines doctor prints per shard folder before it counts the rest


def check_shards(a: DoctorArgs, env: Env) -> Iterator[Result]:
    for s in a.shards:
        folder = Path(s)
        if not folder.is_dir():
            yield Result(FAIL, "shards", f"{folder}: not a folder", "give the --out folder of `mmdata shard`")
            continue
        probs, facts = quick_verify(folder)
        fix = f"`mmdata inspect {folder} --verify`; re-shard or `mmdata shard ... --resume`"
        for p in probs[:MAX_LISTED]:
            yield Result(FAIL, "shards", p, fix)
        if len(probs) > MAX_LISTED:
            yield Result(FAIL, "shards", f"{folder}: {len(probs) - MAX_LISTED} more problem(s)", fix)
        if not probs:
            yield from _shard_fit(a, env, folder, facts)


def _shard_fit(a: DoctorArgs, env: Env, folder: Path, facts: dict) -> Iterator[Result]:
    """The rule and token budget the shards were made with against --model and --seq-len."""
    rule, want = facts.get("rule"), _model_rule(a.model)
    toks = facts.get("image_tokens", [])
    n = len(toks)
    yield Result(OK, "shards", f"{folder}: {n} samples, rule {rule}, --max-image-tokens {facts.get('max_image_tokens')}")
    if want and rule and rule != want:
        yield Result(FAIL, "shard-rule", f"{folder} was made with --rule {rule}; --model {a.model} needs {want}",
                     f"re-shard with `mmdata shard ... --rule {want}`")
    exact = bool(facts.get("text_tokens"))
    text = facts["text_tokens"] if exact else [c // 4 for c in facts.get("text_chars", [0] * n)]
    too_long = sum(1 for i, t in zip(toks, text) if i + t > a.seq_len)
    if n and sum(toks) + sum(text):
        env.image_share = sum(toks) / (sum(toks) + sum(text))
    if n and too_long:
        what = "image + text tokens" if exact else "image tokens + text (~4 characters a token)"
        yield Result(FAIL if too_long == n else WARN, "seq-len",
                     f"{too_long} of {n} samples have more {what} than --seq-len {a.seq_len} and are dropped",
                     "raise --seq-len, or re-shard with a lower --max-image-tokens")


def check_save(a: DoctorArgs, env: Env) -> Iterator[Result]:
    from mmdata.errors import InputError
    from mmtrain.preflight import check_save_dir

    if not a.save:
        return
    try:
        check_save_dir(a.save)
    except InputError as e:
        yield Result(FAIL, "save", str(e))
        return
    from mmdata.storage import is_remote

    if is_remote(a.save):  # object storage has no free-space figure: reachability, keys and bucket were checked
        yield Result(OK, "save", f"{a.save}: reachable and writable (object storage)")
        return
    need = checkpoint_bytes(_params(a)[0]) if _preset(a) else 0
    free = free_bytes(a.save)
    if need and free < 2 * need:
        yield Result(FAIL if free < need else WARN, "save", f"{a.save}: {human(free)} free, a checkpoint of "
                     f"--model {a.model} takes about {human(need)}", "make room or choose another --save")
    else:
        yield Result(OK, "save", f"{a.save}: writable, {human(free)} free"
                                 + (f" (a checkpoint takes about {human(need)})" if need else ""))


# ------------------------------------------------------------------------------------------ memory


def _preset(a: DoctorArgs) -> bool:
    from mmtrain.args import MODEL_NAMES

    return a.model in MODEL_NAMES


def _params(a: DoctorArgs) -> tuple[int, Any]:
    """(parameter count, ModelConfig) of a preset, built on the meta device (no memory, no time)."""
    import torch

    from mmdata.loader import load_tokenizer
    from mmtrain.accel import get_accel
    from mmtrain.model import VLModel, model_config, num_params

    tok = load_tokenizer(a.tokenizer)
    cfg = model_config(a.model, tok.vocab_size, tok.image_placeholder_id or 0)
    with torch.device("meta"):
        m = VLModel(cfg, get_accel("cpu"))
    return num_params(m), cfg


@dataclass
class MemoryEstimate:
    """Bytes per device: weights + gradients + AdamW moments, activations kept for backward, logits."""

    states: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return int(1.1 * (self.states + self.activations + self.logits))  # + allocator slack


def estimate_memory(n_params: int, cfg: Any, seq_len: int, mbs: int, recompute_layers: int, world: int,
                    fsdp: bool, bf16: bool, image_share: float) -> MemoryEstimate:
    """A rough upper estimate in the spirit of Megatron's activation formula (sbh x const per layer),
    for SwiGLU decoders and a ViT fed ~4 patches per image token."""
    states = 16 * n_params // (world if fsdp else 1)  # fp32 weights 4 + grads 4 + Adam 8
    act_b = 2 if bf16 else 4
    T = seq_len * mbs
    t, v = cfg.text, cfg.vision
    per_tok = act_b * (6 * t.hidden + 4 * t.ffn)  # norms, qkv, attention out, residuals, gate_up, act
    kept = max(0, t.layers - recompute_layers)
    text = T * (kept * per_tok + recompute_layers * act_b * t.hidden + (per_tok if recompute_layers else 0))
    patches = int(4 * image_share * T)
    per_patch = act_b * (6 * v.dim + 2 * v.mlp_dim)
    vis_kept = max(0, v.depth - (recompute_layers and v.depth))
    vision = patches * (vis_kept * per_patch + (v.depth - vis_kept) * act_b * v.dim)
    loss_tokens = int((1 - image_share) * T)
    logits = 2 * 4 * loss_tokens * cfg.vocab_size  # fp32 logits and their gradient, on loss tokens only
    return MemoryEstimate(states=states, activations=text + vision, logits=logits)


def memory_advice(a: DoctorArgs, est: MemoryEstimate, world: int) -> str:
    """The seed's remedies, the cheapest first."""
    tips = []
    if not a.recompute_granularity:
        tips.append("--recompute-granularity full --recompute-method uniform --recompute-num-layers 1")
    if a.micro_batch_size > 1:
        tips.append("--micro-batch-size 1")
    if not a.fsdp and world > 1 and est.states > est.activations:
        tips.append("--fsdp")
    if not a.bf16:
        tips.append("--bf16")
    tips.append("re-shard with a lower --max-image-tokens, or a lower --seq-len")
    return "; ".join(tips)


def check_memory(a: DoctorArgs, env: Env) -> Iterator[Result]:
    if not _preset(a):
        yield Result(WARN, "memory", f"not estimated for --model {a.model} (presets only)")
        return
    n_params, cfg = _params(a)
    world = a.nnodes * (a.nproc_per_node or max(1, env.devices))
    rl = cfg.text.layers if a.recompute_method == "uniform" else a.recompute_num_layers
    share = env.image_share if env.image_share is not None else a.image_share
    est = estimate_memory(n_params, cfg, a.seq_len, a.micro_batch_size, rl if a.recompute_granularity else 0,
                          world, a.fsdp, a.bf16, share)
    what = (f"--model {a.model} ({n_params / 1e6:.0f}M) at --seq-len {a.seq_len} x --micro-batch-size "
            f"{a.micro_batch_size}: about {human(est.total)} per device (states {human(est.states)}, "
            f"activations {human(est.activations)}, logits {human(est.logits)})")
    if not env.free_mem:
        yield Result(WARN, "memory", what + "; free device memory unknown")
        return
    free = min(env.free_mem)
    if est.total > free:
        yield Result(FAIL, "memory", what + f" > {human(free)} free", memory_advice(a, est, world))
    elif est.total > 0.85 * free:
        yield Result(WARN, "memory", what + f", close to the {human(free)} free", memory_advice(a, est, world))
    else:
        yield Result(OK, "memory", what + f" of {human(free)} free")


# -------------------------------------------------------------------------------------------- runner


CHECKS: list[tuple[str, Callable[[DoctorArgs, Env], Iterator[Result]]]] = [
    ("python", check_python), ("torch", check_torch), ("torch_npu", check_npu_stack), ("cuda", check_cuda_stack),
    ("devices", check_devices), ("backend", check_backend), ("launcher", check_launcher),
    ("shards", check_shards), ("save", check_save), ("memory", check_memory),
]


def run_checks(a: DoctorArgs, say: Callable[[str], None] = print) -> list[Result]:
    """Every check in order, each line said as soon as it is known; a check that raises becomes a
    `warn` line saying why it could not run."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # no CUDA context before the backend check
    env, out = Env(), []
    for name, fn in CHECKS:
        try:
            results = list(fn(a, env))
        except Exception as e:
            results = [Result(WARN, name, f"could not check: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")]
        for r in results:
            say(r.line())
        out += results
    return out


def doctor(a: DoctorArgs, say: Callable[[str], None] = print) -> int:
    """Exit status: 1 when any check FAILed, else 0."""
    t0 = time.perf_counter()
    results = run_checks(a, say)
    bad = [r for r in results if r.status == FAIL]
    warn = [r for r in results if r.status == WARN]
    say(f"{len(results)} checks: {len(bad)} FAIL, {len(warn)} warn ({time.perf_counter() - t0:.1f} s)")
    return 1 if bad else 0
