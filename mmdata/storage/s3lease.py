"""One writer per S3 prefix: a lease on a lock object made with conditional writes.

S3 has no flock. The lock object is created with ``PUT If-None-Match: *`` (only if absent: AWS S3
since 2024, MinIO, Ceph RGW), so of two runs exactly one creates it. Its JSON body names the holder
(host, pid, start) and the lease length. A heartbeat thread renews it (``PUT If-Match: ETag``) every
sixth of the lease. Expiry is judged on the server's clock (the object's ``LastModified`` + lease
against the response's ``Date``), so the nodes' clocks do not matter. A lease that has run out (its
holder was killed or cut off) is taken over by ``DELETE If-Match: its ETag`` and a conditional
create: two takers cannot both win. The holder deletes the object on exit.

A holder that cannot renew for half its lease (or finds the object replaced) has lost it: its main
thread is interrupted (``LeaseLost``, one line, exit 2) well before any taker can see the lease run
out. While the lease is held, SIGTERM unwinds the run (so the lock is released at once) instead of
killing it outright.

An endpoint that answers a conditional write with 501 NotImplemented, or ignores the header (found by
a second conditional create that should fail), gets a best-effort lease (read, then plain writes) and
one warning line: refusing would make ``--out s3://`` unusable there, and the best-effort lease still
refuses a second run unless both start within the same second or so.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from mmdata.storage.base import StorageError

__all__ = ["S3Lease", "LeaseLost", "LEASE_ENV", "DEFAULT_LEASE_S", "lease_seconds"]

LEASE_ENV = "MMDATA_S3_LEASE_S"  # lease length in seconds (tests use a short one)
DEFAULT_LEASE_S = 60.0
CLOCK_SLACK_S = 1.0  # LastModified and Date are whole seconds
_TAKE_TRIES = 4


class LeaseLost(StorageError):
    """This run's lease was taken over or could not be renewed: it stopped writing."""


def lease_seconds(value: float | None = None) -> float:
    """The lease length: ``value``, else $MMDATA_S3_LEASE_S, else 60 s."""
    raw = value if value is not None else os.environ.get(LEASE_ENV)
    if raw is None or raw == "":
        return DEFAULT_LEASE_S
    try:
        s = float(raw)
    except ValueError:
        s = -1.0
    if not s > 0:
        raise StorageError(None, f"{LEASE_ENV} must be a positive number of seconds (got {raw!r})")
    return s


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(e: BaseException) -> tuple[str, int]:
    """(code, HTTP status) of a botocore ClientError; ("", 0) for anything else."""
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", "")), int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _server_now(resp: dict) -> float:
    """The server's clock from the response's Date header (this host's clock if it has none)."""
    date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return time.time()


def _unsupported(e: BaseException) -> bool:
    code, status = _error(e)
    return status == 501 or code == "NotImplemented"


def _conflict(e: BaseException) -> bool:
    """412: the condition failed; 409: a concurrent conditional write; 404: the object is gone."""
    code, status = _error(e)
    return status in (404, 409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey")


@dataclass
class Held:
    """The lock object as read: its ETag, body (None if it is not an mmdata lock) and times (server clock)."""

    etag: str
    body: dict | None
    modified: float
    server_now: float

    @property
    def ends(self) -> float:
        return self.modified + float((self.body or {}).get("lease_s", DEFAULT_LEASE_S)) + CLOCK_SLACK_S

    @property
    def expired(self) -> bool:
        return self.server_now > self.ends

    def holder(self) -> str:
        b = self.body or {}
        return f"host {b.get('host', '?')}, pid {b.get('pid', '?')}, since {b.get('started', '?')}"


def _default_sigterm_in_child() -> None:
    """A forked worker must not inherit the holder's SIGTERM handler: ``Pool.terminate`` ends workers
    with SIGTERM, and workers that ran the handler instead of dying hung the pool's shutdown."""
    if isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), S3Lease):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class S3Lease:
    """The lock object ``url`` held for a with-block by this process (see the module doc)."""

    def __init__(self, backend: Any, url: str, what: str, lease_s: float | None = None):
        from mmdata.storage.s3 import split_url

        self.url, self.what, self.lease_s = url, what, lease_seconds(lease_s)
        self.bucket, self.key = split_url(url)
        self.prefix = url.rsplit("/", 1)[0]
        self.client = backend.client  # acquire and release: the patient client
        t = max(1.0, self.lease_s / 12)  # a renewal answers (or fails) within a sixth of the lease
        self.beat_client = backend.new_client(t, t, 1)
        self.token, self.pid, self.started = uuid.uuid4().hex, os.getpid(), time.time()
        self.conditional = True
        self.etag = ""
        self.valid_until = 0.0
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._old_handler: Any = None

    # -- the object ---------------------------------------------------------------------------

    def _body(self) -> bytes:
        now = time.time()
        return orjson.dumps({"mmdata_lock": 1, "what": self.what, "host": socket.gethostname(), "pid": self.pid,
                             "started": _iso(self.started), "renewed": _iso(now),
                             "expires": _iso(now + self.lease_s), "lease_s": self.lease_s, "token": self.token})

    def _put(self, client: Any, **cond: str) -> str:
        kw = cond if self.conditional else {}
        return client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), **kw)["ETag"]

    def _read(self, client: Any) -> Held | None:
        try:
            r = client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:
            if _error(e)[1] == 404:
                return None
            raise
        try:
            body = orjson.loads(r["Body"].read())
            body = body if isinstance(body, dict) and body.get("mmdata_lock") == 1 else None
        except orjson.JSONDecodeError:
            body = None
        return Held(r["ETag"], body, r["LastModified"].timestamp(), _server_now(r))

    def _ours(self, held: Held | None) -> bool:
        return held is not None and (held.body or {}).get("token") == self.token

    def _fallback(self, e: BaseException | str) -> None:
        """The endpoint has no conditional writes: say so once and go on best-effort."""
        if self.conditional:
            self.conditional = False
            sys.stderr.write(f"warning: {self.url}: this S3 endpoint does not support conditional writes ({e}); "
                             "the lock is best-effort: two runs started at the same moment are not kept apart\n")

    # -- acquire ------------------------------------------------------------------------------

    def _create(self) -> bool:
        """Create the object (seen absent); True when this process now holds it."""
        if self.conditional:
            try:
                self.etag = self._put(self.client, IfNoneMatch="*")
                self._probe()
                return True
            except Exception as e:
                if _conflict(e):
                    return self._adopt(self._read(self.client))  # our create may have landed before a retry
                if not _unsupported(e):
                    raise
                self._fallback(f"{_error(e)[0] or 'NotImplemented'}")
        self._put(self.client)
        return self._adopt(self._read(self.client))  # best-effort: the last writer of a race wins

    def _adopt(self, held: Held | None) -> bool:
        """True (and its ETag taken) when the object read is this process's."""
        if held is None or not self._ours(held):
            return False
        self.etag = held.etag
        return True

    def _probe(self) -> None:
        """A second conditional create of our own object must fail; if it succeeds, the header is ignored."""
        try:
            self.etag = self._put(self.client, IfNoneMatch="*")
        except Exception as e:
            if _conflict(e):
                return
            if not _unsupported(e):
                raise
        self._fallback("If-None-Match was ignored")

    def _refusal(self, held: Held) -> StorageError:
        if held.body is None:
            return StorageError(self.url, "exists and is not an mmdata lock: if no run writes this prefix, "
                                          "remove it (or choose another --out)")
        wait = max(0, round(held.ends - held.server_now))
        return StorageError(self.prefix, f"another `{held.body.get('what', 'mmdata')}` is writing here "
                                         f"({held.holder()}); its lease on {self.key.rsplit('/', 1)[-1]} ends at "
                                         f"{_iso(held.ends)} (in {wait} s) unless renewed: wait for it to finish "
                                         "or choose another --out")

    def acquire(self) -> None:
        """Take the lock, taking over an expired lease; StorageError (one line) if another run holds it."""
        for _ in range(_TAKE_TRIES):
            held = self._read(self.client)  # first, so an endpoint that ignores If-None-Match overwrites nothing
            if held is None:
                t = time.monotonic()
                if self._create():
                    self.valid_until = t + self.lease_s
                    return
                continue  # another run created it first: read it
            if held.body is None or not held.expired:
                raise self._refusal(held)
            sys.stderr.write(f"note: {self.url}: taking over the lock of {held.holder()}: its lease ended at "
                             f"{_iso(held.ends)}\n")
            try:
                if self.conditional:
                    self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=held.etag)
                else:
                    self.client.delete_object(Bucket=self.bucket, Key=self.key)
            except Exception as e:
                if _unsupported(e):
                    self._fallback(f"{_error(e)[0] or 'NotImplemented'}")
                elif not _conflict(e):
                    raise  # another taker changed or removed it first: read again
        raise StorageError(self.prefix, "the lock kept changing hands while this run tried to take it: "
                                        "another run is starting here; try again")

    # -- hold ---------------------------------------------------------------------------------

    def _renew(self) -> None:
        """One renewal; sets ``lost`` if the object is no longer ours."""
        t = time.monotonic()
        try:
            if not self.conditional and not self._ours(self._read(self.beat_client)):
                raise LookupError
            self.etag = self._put(self.beat_client, IfMatch=self.etag)
            self.valid_until = t + self.lease_s
        except LookupError:
            self._lose("it was replaced or removed by someone else")
        except Exception as e:
            if _unsupported(e):  # If-None-Match worked but If-Match is not there: go on best-effort
                self._fallback(f"If-Match: {_error(e)[0] or 'NotImplemented'}")
                return
            if not _conflict(e):
                raise
            held = self._read(self.beat_client)
            if not self._adopt(held):  # else our previous renewal landed but its answer was lost
                self._lose(f"it was taken over ({held.holder()})" if held and held.body else
                           "it was replaced or removed by someone else")

    def _beat(self) -> None:
        last = ""
        while not self._stop.wait(self.lease_s / 6) and self.lost is None:
            try:
                self._renew()
            except Exception as e:  # network trouble: keep trying until half the lease is gone
                last = f": {e}"
            if self.lost is None and time.monotonic() > self.valid_until - self.lease_s / 2:
                self._lose(f"it could not be renewed for {self.lease_s / 2:.0f} s{last}")

    def _lose(self, why: str) -> None:
        if self._stop.is_set():
            return
        self.lost = why
        if self._old_handler is not None and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            # a real signal at the main thread: it also wakes a blocking call (interrupt_main would not)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)  # type: ignore[arg-type]

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.lost is not None:
            raise self._lost_error()
        sys.stderr.write(f"terminated: releasing the lock {self.url}\n")
        raise SystemExit(128 + signum)

    def _lost_error(self) -> LeaseLost:
        return LeaseLost(self.url, f"this run lost its lock: {self.lost}; it stopped writing: check the other "
                                   "run, then rerun (with --resume where the command has it)")

    def __enter__(self) -> S3Lease:
        from mmdata.storage.s3 import _classify

        try:
            self.acquire()
        except StorageError:
            raise
        except Exception as e:  # connection, credentials, bucket: one line naming the lock and the fix
            raise _classify(self.url, e) or StorageError(self.url, f"cannot take the lock: {e}") from None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._thread = threading.Thread(target=self._beat, name="mmdata-s3-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._old_handler is not None and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._old_handler)
        if self.lost is None:
            self._release()
        if self.lost is not None and exc_type is None:
            raise self._lost_error()

    def _release(self) -> None:
        """Delete the object if it is still ours; a failure is one warning line (the lease runs out anyway)."""
        try:
            if self.conditional:
                try:
                    self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
                    return
                except Exception as e:
                    if not _conflict(e):
                        raise
            held = self._read(self.client)  # a renewal's answer was lost, or best-effort mode
            if self._adopt(held):
                kw = {"IfMatch": self.etag} if self.conditional else {}
                self.client.delete_object(Bucket=self.bucket, Key=self.key, **kw)
            elif held is not None:
                self.lost = f"it was taken over ({held.holder()})"
        except Exception as e:
            sys.stderr.write(f"warning: {self.url}: could not remove the lock ({e}); it expires by itself "
                             f"{self.lease_s:.0f} s after its last renewal\n")


os.register_at_fork(after_in_child=_default_sigterm_in_child)
