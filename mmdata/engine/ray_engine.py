"""``--engine ray``: the same ordered map as the local pool, as Ray tasks on a running cluster.

Plain ``ray.remote`` tasks, not Ray Data (whose batch boundaries move with the cluster). A task
whose worker dies (OOM, node lost, SIGKILL) is retried up to ``max_retries`` times; a task that
raises is not retried (the error is the answer). The driver's ``AWS_*`` variables (and
``RAY_AUTH_TOKEN`` where the driver has one) reach every worker through the job's ``runtime_env``,
so nodes need no S3 credentials of their own (to join a token cluster a node needs its own
``RAY_AUTH_MODE=token`` and token: docs/shard.md, "On a real cluster").
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from mmdata.engine.base import _bounded
from mmdata.errors import InputError, MMDataError

__all__ = ["RayEngine", "RayExecutor", "resolve_address", "forwarded_env", "CONNECT_TIMEOUT_S"]

T = TypeVar("T")
R = TypeVar("R")
CONNECT_TIMEOUT_S = 10.0
MAX_RETRIES = 3
_FORWARD_PREFIXES = ("AWS_", "MMDATA_")
_FORWARD_NAMES = ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")


def forwarded_env() -> dict[str, str]:
    """The driver's variables every worker needs: S3 endpoint and credentials, mmdata settings, and
    Ray's auth token when the driver holds it in the environment."""
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARD_PREFIXES) or k in _FORWARD_NAMES}


def _no_cluster(address: str, why: str) -> InputError:
    return InputError(None, f"--ray-address {address}: no Ray cluster there ({why}); start one with "
                            "`ray start --head` or pass --ray-address HOST:PORT of its head node")


def resolve_address(address: str | None) -> str:
    """``auto`` / None -> the cluster this machine belongs to (RAY_ADDRESS or the last ``ray start``),
    as host:port; InputError naming the address when there is none."""
    given = address or os.environ.get("RAY_ADDRESS") or "auto"
    if given.startswith("ray://"):
        return given
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        return canonicalize_bootstrap_address_or_die(given)
    except (ConnectionError, ValueError) as e:
        raise _no_cluster(given, str(e).split(". ")[0].rstrip(".")) from None


def _enable_token_auth() -> bool:
    """Token mode for this driver when ``RAY_AUTH_MODE`` is unset and a token is at hand
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``): what ``ray.init`` does for
    ``address="auto"`` only, so a driver given HOST:PORT on a token cluster would otherwise be refused."""
    import logging

    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return False
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = log.level
    log.setLevel(logging.ERROR)  # its "token authentication is enabled" warning says nothing to our users
    try:
        return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))
    finally:
        log.setLevel(level)


def _probe(given: str, host_port: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connect to the head's GCS port: ray.init itself waits minutes on a dead address."""
    hp = host_port.removeprefix("ray://")
    host, _, port = hp.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(None, f"--ray-address {given}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise _no_cluster(given, f"cannot connect to {hp}: {e.strerror or e}") from None


def _apply(fn: Callable[[T], R], item: T) -> tuple[str, R]:
    """The one Ray task: ``fn(item)`` (``fn`` arrives once per job through the object store), with the
    IP of the node that ran it, so the driver can say where the work went."""
    import ray

    return ray.util.get_node_ip_address(), fn(item)


class RayEngine:
    """An ordered map over Ray tasks; ``workers`` is the cluster's CPU count when connected."""

    def __init__(self, address: str, max_retries: int = MAX_RETRIES):
        import ray

        self.address = address
        self.max_retries = max_retries
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._apply: Any = None
        self.tasks_per_node: Counter[str] = Counter()

    @classmethod
    def connect(cls, address: str | None = None, max_retries: int = MAX_RETRIES) -> RayEngine:
        """Join the cluster at ``address`` (fails in seconds with one line naming it when none is there)."""
        import ray

        given = address or os.environ.get("RAY_ADDRESS") or "auto"
        resolved = resolve_address(address)
        _probe(given, resolved)
        if ray.is_initialized():
            ray.shutdown()
        has_token = _enable_token_auth()
        try:
            ray.init(address=resolved, runtime_env={"env_vars": forwarded_env()}, logging_level="WARNING",
                     log_to_driver=True, configure_logging=True)
        except Exception as e:  # AuthenticationError, ConnectionError, a wrong port's garbage
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "auth" in why.lower() or "token" in why.lower():
                raise InputError(None, f"--ray-address {given}: the cluster refused this driver ({why}); set "
                                       "RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's token") from None
            if not has_token and os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled":
                # The TCP probe passed: a token cluster refuses a driver without one in just this way.
                raise InputError(None, f"--ray-address {given}: cannot join the Ray cluster there ({why}); if it "
                                       "uses token authentication, set RAY_AUTH_TOKEN or ~/.ray/auth_token to its "
                                       "token (`ray get-auth-token` on the head node)") from None
            raise _no_cluster(given, why) from None
        return cls(resolved, max_retries)

    def _remote(self) -> Any:
        import ray

        if self._apply is None:
            # max_retries covers system failures (worker or node death); exceptions are not retried.
            self._apply = ray.remote(max_retries=self.max_retries, retry_exceptions=False)(_apply)
        return self._apply

    def map(self, fn: Callable[[T], R], items: Iterable[T], in_flight: int | None = None) -> Iterator[R]:
        """``fn`` over ``items`` as Ray tasks; results in submission order, ``in_flight`` tasks at most
        (default twice the cluster's CPUs). ``fn`` is any picklable callable (a function, a partial)."""
        import ray

        remote = self._remote()
        fn_ref = ray.put(fn)
        limit = in_flight or 2 * self.workers
        yield from _bounded(lambda x: remote.remote(fn_ref, x), self._get, items, limit)

    def _get(self, ref: Any) -> Any:
        import ray
        from ray.exceptions import RayTaskError, WorkerCrashedError

        try:
            node, result = ray.get(ref)
            self.tasks_per_node[node] += 1
            return result
        except RayTaskError as e:
            cause = e.cause if isinstance(e.cause, BaseException) else None
            if isinstance(cause, MMDataError):
                raise cause from None
            raise RuntimeError(f"a Ray task failed:\n{e}") from None
        except WorkerCrashedError as e:
            raise RuntimeError(f"a Ray task's worker died {self.max_retries + 1} times; giving up: "
                               f"{str(e).splitlines()[0]}") from None

    def executor(self) -> RayExecutor:
        """A ``concurrent.futures.Executor`` on this cluster, for code written against a process pool
        (``submit`` / ``wait``); the same retries as ``map``."""
        return RayExecutor(self.max_retries)

    def where(self) -> str:
        """Where the finished tasks ran: ``ray: 11 tasks on 2 nodes (10.0.0.1: 6, 10.0.0.2: 5)``."""
        per = ", ".join(f"{ip}: {n}" for ip, n in sorted(self.tasks_per_node.items()))
        total = sum(self.tasks_per_node.values())
        return f"ray: {total} tasks on {len(self.tasks_per_node)} node(s) ({per})"

    def close(self) -> None:
        import ray

        if self.tasks_per_node:
            print(self.where(), file=sys.stderr)
        if ray.is_initialized():
            ray.shutdown()


def _call(fn: Callable[..., R], args: tuple, kwargs: dict) -> R:
    return fn(*args, **kwargs)


class RayExecutor(Executor):
    """``submit(fn, *args)`` as a Ray task; its future is a plain ``concurrent.futures.Future``
    (``ObjectRef.future()``), so ``wait(..., FIRST_COMPLETED)`` and ``as_completed`` work unchanged.
    An ``MMDataError`` raised by ``fn`` reaches the caller as itself."""

    def __init__(self, max_retries: int = MAX_RETRIES):
        import ray

        self._remote = ray.remote(max_retries=max_retries, retry_exceptions=False)(_call)

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[override]
        inner = self._remote.remote(fn, args, kwargs).future()
        outer: Future = Future()

        def done(f: Future) -> None:
            try:
                outer.set_result(f.result())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                cause = getattr(e, "cause", None)
                outer.set_exception(cause if isinstance(cause, MMDataError) else e)

        inner.add_done_callback(done)
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to stop: the tasks belong to the Ray job (``RayEngine.close`` ends it)."""


def wait_for_nodes(n: int, timeout: float = 60.0) -> None:
    """Block until the connected cluster has ``n`` alive nodes (tests and benchmarks start them)."""
    import ray

    deadline = time.monotonic() + timeout
    while sum(1 for node in ray.nodes() if node["Alive"]) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster did not reach {n} nodes in {timeout} s")
        time.sleep(0.2)
