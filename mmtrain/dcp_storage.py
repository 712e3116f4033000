"""torch.distributed.checkpoint (DCP) reading and writing through the storage seam (`mmdata.storage`), so a
`torch_dcp` checkpoint goes straight to and from `s3://` with no local staging copy.

torch ships the pattern: `FsspecWriter` / `FsspecReader` are `FileSystemWriter` / `FileSystemReader` with
their `fs` (a `FileSystemBase`) swapped for one over fsspec. Here `fs` is the seam: every file DCP writes
is one `storage.atomic_output` (visible only when complete; an S3 multipart upload aborted on error), the
`.metadata.tmp` + rename DCP does for its metadata becomes one atomic write of the final name (no temp
object ever exists on S3), and reads are ranged GETs of 4-64 MiB blocks (a rank that holds a slice of
every tensor never downloads whole files; small tensors side by side cost one request).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from torch.distributed.checkpoint.filesystem import FileSystemBase, FileSystemReader, FileSystemWriter

from mmdata import storage

TMP_SUFFIX = ".tmp"
READAHEAD = 4 << 20  # bytes one ranged read fetches at least: small tensors side by side cost one request
READAHEAD_MAX = 64 << 20  # reading on through a file doubles the block up to this (bounded memory)


class _Readahead:
    """Ranged reads of one object. Each request fetches at least a block; a read inside the last block
    is served from it; reading on through the file doubles the block (4 -> 64 MiB), a jump resets it.
    DCP reads a file's items roughly in the order they were written, so one rank loading a whole file
    makes a few dozen requests, while one that needs only slices of large tensors wastes at most a
    block per request and never downloads whole files."""

    def __init__(self, f: Any) -> None:
        self._f, self._start, self._buf, self._block = f, 0, b"", READAHEAD

    def read_at(self, length: int, offset: int) -> bytes:
        end = self._start + len(self._buf)
        if not (self._start <= offset and offset + length <= end):
            onward = self._buf and self._start <= offset <= end
            self._block = min(2 * self._block, READAHEAD_MAX) if onward else READAHEAD
            self._buf, self._start = self._f.read_at(max(length, self._block), offset), offset
        i = offset - self._start
        return self._buf[i:i + length]


class SeamFileSystem(FileSystemBase):
    """DCP's file-system interface on `mmdata.storage` (local paths or urls)."""

    def __init__(self) -> None:
        self._pending: dict[str, bytes] = {}  # temp name -> bytes, written under the final name by rename()

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[IO[bytes]]:
        url = os.fspath(path)
        if "r" in mode:
            with storage.open_input(url) as f:
                yield _Readahead(f) if hasattr(f, "read_at") else f
            return
        if url.endswith(TMP_SUFFIX):  # DCP's metadata: kept in memory until rename() names it
            buf = io.BytesIO()
            yield buf
            self._pending[url] = buf.getvalue()
            return
        with storage.atomic_output(url) as f:
            yield f

    def concat_path(self, path: str | os.PathLike, suffix: str) -> str:
        return storage.join(os.fspath(path), suffix)

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        data = self._pending.pop(os.fspath(path))
        with storage.atomic_output(os.fspath(new_path)) as f:
            f.write(data)

    def init_path(self, path: str | os.PathLike) -> str:
        return os.fspath(path)

    def mkdir(self, path: str | os.PathLike) -> None:
        storage.makedirs(os.fspath(path))

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return True

    def exists(self, path: str | os.PathLike) -> bool:
        return storage.exists(os.fspath(path))

    def rm_file(self, path: str | os.PathLike) -> None:
        storage.remove(os.fspath(path))


class SeamWriter(FileSystemWriter):
    """A DCP writer onto `url` through the seam. No fsync: an object is durable once its upload completes
    (and DCP would fall back to a machine-wide `os.sync()` for a stream without a file descriptor)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, sync_files=False)
        self.fs = SeamFileSystem()
        self.path = url


class SeamReader(FileSystemReader):
    """A DCP reader of `url` through the seam: ranged reads of at least READAHEAD bytes."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.fs = SeamFileSystem()
        self.path = url

    def _slice_file(self, file: Any, sinfo: Any) -> IO[bytes]:
        if isinstance(file, _Readahead):  # an object: one ranged GET per block, not per tensor
            return io.BytesIO(file.read_at(sinfo.length, sinfo.offset))
        return super()._slice_file(file, sinfo)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        """DCP's metadata, read as one object (pickle's many small reads would each be a request)."""
        import pickle

        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = pickle.loads(storage.read_bytes(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
