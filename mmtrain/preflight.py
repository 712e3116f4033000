"""Cheap checks that a run can finish, done before any expensive work: `--save` writable, room for a
checkpoint. Free of torch, so `mmtrain run` and `mmtrain doctor` answer in milliseconds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mmdata.format.names import INDEX, MANIFEST
from mmdata.errors import InputError

BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two fp32 moments


def human(n: float) -> str:
    """Bytes in the nearest binary unit, e.g. '1.4 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def check_save_dir(root: str | Path, rank: int = 0) -> Path | str:
    """Create `root` if needed and prove it writable with a probe file; InputError (exit 2) otherwise.
    On object storage: the endpoint, credentials and bucket answer, and a probe object can be written."""
    from mmdata import storage

    if storage.is_remote(root):
        return _check_remote_save(str(root), rank)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(root, "--save needs a folder, this is a file: choose another --save")
    probe = root / f".mmtrain-write-probe.{rank}.{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as e:
        raise InputError(root, f"--save folder is not writable ({e.strerror or e}): fix its permissions "
                               "or choose another --save") from None
    return root


def _check_remote_save(url: str, rank: int) -> str:
    """Write and remove a probe object under `url`: a missing bucket, wrong keys, an unreachable endpoint
    or a read-only key fail here, in one line naming the url and what to set, before the model is built."""
    from mmdata import storage

    storage.makedirs(url)  # on S3: one request that fails naming `url` for a bad endpoint, bucket or keys
    probe = storage.join(url, f".mmtrain-write-probe.{rank}.{os.getpid()}")
    try:
        with storage.atomic_output(probe) as f:
            f.write(b"ok")
        storage.remove(probe)
    except InputError:
        raise
    except Exception as e:
        raise InputError(url, f"--save is not writable ({str(e).splitlines()[0][:200]}): set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY to keys allowed to write there, or choose another --save") from None
    return url


def check_load_source(url: str) -> None:
    """A --load on object storage: the endpoint, credentials and bucket answer (one request), so a bad
    setup fails before the model is built; a missing prefix is fine (the run starts from scratch)."""
    from mmdata import storage

    if storage.is_remote(url):
        storage.isdir(url)


def free_bytes(path: str | Path) -> int:
    """Free bytes for an unprivileged writer on the file system holding `path` (or its nearest parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def checkpoint_bytes(n_params: int) -> int:
    """Size of one checkpoint of a model with `n_params` parameters (all ranks together)."""
    return n_params * BYTES_PER_PARAM


def check_free_space(root: str | Path, need: int) -> None:
    """InputError (exit 2) when the file system of `root` cannot hold a checkpoint of `need` bytes."""
    free = free_bytes(root)
    if free < need:
        raise InputError(root, f"not enough free space for a checkpoint: needs about {human(need)}, "
                               f"{human(free)} free: make room or choose another --save")


def check_shard_files(folders: list[str]) -> None:
    """InputError (exit 2) naming the first shard that is missing or holds other bytes than the index
    says: the format's one folder check (a stat and one 512-byte read per shard, no torch), run before
    the model is built. Truncated shards are left to the loader, which weighs them against the bad-sample budget."""
    from mmdata.format.check import folder_problems, refuse_first

    for folder in folders:
        if not any((Path(folder) / n).is_file() for n in (MANIFEST, INDEX)):
            continue  # a folder of bare tars, or object storage: the loader checks what is there
        refuse_first(folder_problems(folder)[0], folder)
