"""S3-compatible object storage (AWS S3, MinIO, Ceph RGW, Huawei OBS) behind the storage seam.

Reads go through ``pyarrow.fs.S3FileSystem`` (``open_input_file`` + ``read_at`` release the GIL and
read index.parquet directly). Writes go through boto3's multipart API, because pyarrow's output
stream cannot be aborted: on an exception (or when garbage-collected) it *completes* the upload,
leaving a partial object under the final name. Here an object appears only when its with-block exits
cleanly; on an error the upload is aborted and nothing is left under any name.

Endpoint, credentials and region come from the standard variables (AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION). Create
one backend per process: neither client is fork-safe (the storage registry caches per pid).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from mmdata.storage.base import StorageError

__all__ = ["S3Backend", "split_url", "endpoint_url"]

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 20.0
MAX_ATTEMPTS = 3
PART_SIZE = 16 << 20  # multipart part size (S3 needs >= 5 MiB for all but the last part)
PARTS_IN_FLIGHT = 2
_OPEN_FILES = 64  # cached open readers (saves a HEAD per ranged read of the same object)
_ENV_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ("bucket", "some/key"); the key has no leading or trailing '/'."""
    if not url.startswith("s3://"):
        raise StorageError(url, "not an s3:// URL")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise StorageError(url, "no bucket in the URL: write s3://BUCKET/PREFIX")
    return bucket, key.strip("/")


def endpoint_url() -> str | None:
    """The endpoint the standard variables name (S3-specific first), or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _classify(url: str, err: BaseException) -> StorageError | None:
    """The one-line StorageError for a connection, credential or bucket failure; None for others."""
    text = str(err)
    ep = endpoint_url() or "the AWS default endpoint"
    low = text.lower()
    if any(s in text for s in ("NETWORK_CONNECTION", "Could not connect", "curlCode", "Timeout was reached",
                               "Could not resolve")) or "connect timeout" in low or "endpointconnectionerror" in low \
            or "could not connect to the endpoint" in low or "read timeout" in low:
        return StorageError(url, f"cannot reach S3 endpoint {ep}: set AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) "
                                 "to a reachable endpoint")
    if any(s in text for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ACCESS_DENIED", "AccessDenied",
                               "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "403", "Forbidden")):
        return StorageError(url, f"access denied by {ep}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                 "to credentials allowed on this bucket")
    if "NoSuchBucket" in text or "NO_SUCH_BUCKET" in text:
        bucket = url[5:].partition("/")[0]
        return StorageError(url, f"bucket '{bucket}' does not exist at {ep}: create it or fix the URL")
    return None


class S3Backend:
    """The Backend protocol on S3: pyarrow for reads and listings, boto3 multipart for atomic writes."""

    def __init__(self) -> None:
        self._fs: Any = None
        self._client: Any = None
        self._checked: set[str] = set()
        self._lock = threading.Lock()
        self._files: OrderedDict[str, Any] = OrderedDict()
        self._env: tuple = tuple(os.environ.get(k) for k in _ENV_KEYS)

    # -- clients -----------------------------------------------------------------------------

    def _filesystem(self, attempts: int = MAX_ATTEMPTS) -> Any:
        import pyarrow.fs as pafs

        kw: dict[str, Any] = {
            "region": _region(),
            "connect_timeout": CONNECT_TIMEOUT_S,
            "request_timeout": REQUEST_TIMEOUT_S,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        }
        if endpoint_url():
            kw["endpoint_override"] = endpoint_url()
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            kw["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
            kw["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
            if os.environ.get("AWS_SESSION_TOKEN"):
                kw["session_token"] = os.environ["AWS_SESSION_TOKEN"]
        return pafs.S3FileSystem(**kw)

    def _settings_changed(self) -> None:
        """Drop the clients when the AWS_* variables they were made from change (the backend is
        cached per process; a test or a library user may point it elsewhere)."""
        key = tuple(os.environ.get(k) for k in _ENV_KEYS)
        if key != self._env:
            self._env, self._fs, self._client = key, None, None
            self._checked.clear()
            with self._lock:
                for f in self._files.values():
                    f.close()
                self._files.clear()

    @property
    def fs(self) -> Any:
        self._settings_changed()
        if self._fs is None:
            self._fs = self._filesystem()
        return self._fs

    @property
    def client(self) -> Any:
        """A boto3 S3 client (writes only), with the same endpoint, timeouts and retry limit."""
        self._settings_changed()
        if self._client is None:
            self._client = self.new_client(CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S * 3, MAX_ATTEMPTS)
        return self._client

    @staticmethod
    def new_client(connect_timeout: float, read_timeout: float, attempts: int) -> Any:
        """A fresh boto3 S3 client on the configured endpoint with these timeouts (the lease's heartbeat
        needs answers within a fraction of its lease, so it keeps one of its own)."""
        import boto3
        from botocore.config import Config

        cfg = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                     retries={"max_attempts": attempts, "mode": "standard"},
                     s3={"addressing_style": "path"} if endpoint_url() else None)
        return boto3.session.Session().client("s3", endpoint_url=endpoint_url(), region_name=_region(), config=cfg)

    def lease(self, url: str, what: str, lease_s: float | None = None) -> contextlib.AbstractContextManager[None]:
        """Hold the lock object ``url`` for a with-block (one writer per prefix; see ``s3lease``)."""
        from mmdata.storage.s3lease import S3Lease

        self.check(url.rsplit("/", 1)[0])  # an unusable endpoint or bucket names the output, not the lock
        return S3Lease(self, url, what, lease_s)

    def check(self, url: str) -> None:
        """Fail fast (StorageError, one line) when the endpoint, credentials or bucket of ``url`` are
        unusable; one probe per bucket and process, with no retries so it answers within seconds."""
        bucket, _ = split_url(url)
        self._settings_changed()
        if bucket in self._checked:
            return
        import pyarrow.fs as pafs

        try:
            info = self._filesystem(attempts=1).get_file_info(bucket)
        except OSError as e:
            raise _classify(url, e) or StorageError(url, f"cannot use the bucket: {e}") from None
        if info.type == pafs.FileType.NotFound:
            ep = endpoint_url() or "the AWS default endpoint"
            raise StorageError(url, f"bucket '{bucket}' does not exist at {ep}: create it or fix the URL")
        self._checked.add(bucket)

    @contextlib.contextmanager
    def _errors(self, url: str) -> Iterator[None]:
        """Map pyarrow/botocore errors to StorageError; a missing object stays FileNotFoundError."""
        self.check(url)
        try:
            yield
        except FileNotFoundError:
            raise
        except StorageError:
            raise
        except Exception as e:
            mapped = _classify(url, e)
            if mapped is None:
                raise
            raise mapped from None

    @staticmethod
    def _path(url: str) -> str:
        bucket, key = split_url(url)
        return f"{bucket}/{key}" if key else bucket

    # -- reads -------------------------------------------------------------------------------

    def open_input(self, url: str) -> BinaryIO:
        """A seekable random-access reader (pyarrow RandomAccessFile; ``read_at`` releases the GIL)."""
        with self._errors(url):
            return self.fs.open_input_file(self._path(url))

    def _cached_file(self, url: str) -> Any:
        self._settings_changed()
        with self._lock:
            f = self._files.get(url)
            if f is not None:
                self._files.move_to_end(url)
                return f
        f = self.open_input(url)
        with self._lock:
            self._files[url] = f
            while len(self._files) > _OPEN_FILES:
                self._files.popitem(last=False)[1].close()
        return f

    def read_range(self, url: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``: one ranged GET (the opened reader is cached, so no HEAD)."""
        f = self._cached_file(url)
        with self._errors(url):
            data = f.read_at(length, offset)
        if len(data) != length:
            raise StorageError(url, f"short read: {len(data)} of {length} bytes at offset {offset} "
                                    "(the object changed or is truncated)")
        return data

    def read_bytes(self, url: str) -> bytes:
        with self._errors(url), self.fs.open_input_file(self._path(url)) as f:
            return f.read()

    def size(self, url: str) -> int:
        info = self._info(url)
        if info.type.name != "File":
            raise FileNotFoundError(url)
        return int(info.size)

    def _info(self, url: str) -> Any:
        with self._errors(url):
            return self.fs.get_file_info(self._path(url))

    def exists(self, url: str) -> bool:
        return self._info(url).type.name != "NotFound"

    def isdir(self, url: str) -> bool:
        """True for a bucket or a prefix with at least one object under it."""
        return self._info(url).type.name == "Directory"

    def listdir(self, url: str) -> list[str]:
        """Base names directly under the prefix (objects and sub-prefixes), sorted."""
        import pyarrow.fs as pafs

        with self._errors(url):
            infos = self.fs.get_file_info(pafs.FileSelector(self._path(url), allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def arrow_source(self, url: str) -> tuple[str, Any]:
        """``(path, filesystem)`` for pyarrow's readers (index.parquet read in place, no copy)."""
        self.check(url)
        return self._path(url), self.fs

    # -- writes ------------------------------------------------------------------------------

    def makedirs(self, url: str) -> None:
        """Nothing to make on S3 (prefixes exist while objects do); checks the bucket."""
        self.check(url)

    def remove(self, url: str) -> None:
        """Delete one object; a missing one is not an error."""
        bucket, key = split_url(url)
        self._forget(url)
        with self._errors(url):
            self.client.delete_object(Bucket=bucket, Key=key)

    @contextlib.contextmanager
    def atomic_output(self, url: str) -> Iterator[BinaryIO]:
        """A writer whose object appears under ``url`` only when the block exits cleanly."""
        bucket, key = split_url(url)
        if not key:
            raise StorageError(url, "needs an object key after the bucket")
        self.check(url)
        w = MultipartWriter(self.client, bucket, key, url=url)
        try:
            yield w  # type: ignore[misc]
            w.complete()
        except BaseException:
            w.abort()
            raise
        self._forget(url)

    def remove_tree(self, url: str) -> None:
        """Delete every object under the prefix ``url`` (one recursive listing: no request per name to
        tell objects from sub-prefixes)."""
        import pyarrow.fs as pafs

        with self._errors(url):
            infos = self.fs.get_file_info(pafs.FileSelector(self._path(url).rstrip("/"), recursive=True,
                                                            allow_not_found=True))
        for info in infos:
            if info.type == pafs.FileType.File:
                self.remove(f"s3://{info.path}")

    def _forget(self, url: str) -> None:
        """Close the cached reader of ``url`` (its object was replaced or removed)."""
        with self._lock:
            old = self._files.pop(url, None)
        if old is not None:
            old.close()

    def move(self, src: str, dst: str) -> None:
        """Server-side copy then delete (S3 has no rename). boto3's managed ``copy`` sends one CopyObject
        below its multipart threshold and UploadPartCopy parts above it (CopyObject stops at 5 GB), so
        ``dst`` appears only when the copy completes; no byte passes through this machine. A kill
        between copy and delete leaves both objects: moving again is harmless (same bytes)."""
        sb, sk = split_url(src)
        db, dk = split_url(dst)
        self._forget(dst)
        with self._errors(dst):
            self.client.copy({"Bucket": sb, "Key": sk}, db, dk)
            self.client.delete_object(Bucket=sb, Key=sk)

    def abort_incomplete_uploads(self, url: str) -> int:
        """Abort multipart uploads left under the prefix ``url`` by a killed run (invisible, but they
        occupy storage); returns how many. Resume calls it before writing again."""
        bucket, prefix = split_url(url)
        n = 0
        with self._errors(url):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for up in page.get("Uploads", []):
                    self.client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                    n += 1
        return n


class MultipartWriter:
    """A write-only binary stream onto one S3 object: parts upload in the background as the buffer
    fills; ``complete`` makes the object visible (one PUT when it never filled a part), ``abort``
    removes every uploaded part."""

    def __init__(self, client: Any, bucket: str, key: str, part_size: int = PART_SIZE, url: str | None = None):
        self._client, self._bucket, self._key, self._part_size = client, bucket, key, part_size
        self._url = url or f"s3://{bucket}/{key}"
        self._buf = bytearray()
        self._pos = 0
        self._upload_id: str | None = None
        self._parts: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None
        self.closed = False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed S3 writer")
        n = len(data)
        self._buf += data
        self._pos += n
        while len(self._buf) >= self._part_size:
            part = bytes(self._buf[: self._part_size])
            del self._buf[: self._part_size]
            self._send(part)
        return n

    def writelines(self, parts: Iterable[bytes | bytearray | memoryview]) -> None:
        """Like ``io.BufferedWriter.writelines`` (clean's Sink hands its buffered parts over at once)."""
        for part in parts:
            self.write(part)

    def _send(self, part: bytes) -> None:
        if self._upload_id is None:
            up = self._call(self._client.create_multipart_upload, Bucket=self._bucket, Key=self._key)
            self._upload_id = up["UploadId"]
            self._pool = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="s3-part")
        in_flight = [f for f in self._parts if not f.done()]
        if len(in_flight) >= PARTS_IN_FLIGHT:
            in_flight[0].result()  # bounded memory: wait for the oldest part
        number = len(self._parts) + 1
        assert self._pool is not None
        self._parts.append(self._pool.submit(self._call, self._client.upload_part, Bucket=self._bucket, Key=self._key,
                                             UploadId=self._upload_id, PartNumber=number, Body=part))

    def _call(self, fn: Any, **kw: Any) -> Any:
        """One boto3 call, its connection/credential/bucket failures mapped to StorageError."""
        try:
            return fn(**kw)
        except Exception as e:
            mapped = _classify(self._url, e)
            if mapped is None:
                raise
            raise mapped from None

    def complete(self) -> None:
        """Make the object visible under its key (the last step of a clean exit)."""
        self.closed = True
        if self._upload_id is None:
            self._call(self._client.put_object, Bucket=self._bucket, Key=self._key, Body=bytes(self._buf))
            return
        if self._buf or not self._parts:
            self._send(bytes(self._buf))
        self._buf = bytearray()
        etags = [{"PartNumber": i + 1, "ETag": f.result()["ETag"]} for i, f in enumerate(self._parts)]
        self._call(self._client.complete_multipart_upload, Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                               MultipartUpload={"Parts": etags})
        self._shutdown()

    def abort(self) -> None:
        """Drop everything written: no object and no stored part remain."""
        self.closed = True
        self._buf = bytearray()
        if self._upload_id is None:
            return
        for f in self._parts:
            with contextlib.suppress(Exception):
                f.result()
        self._shutdown()
        with contextlib.suppress(Exception):
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
        self._upload_id = None

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self) -> None:
        """Closing is the context manager's job (complete or abort); a bare close marks it closed."""
        self.closed = True

    def __enter__(self) -> MultipartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
