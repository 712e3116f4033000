"""`clean hf`: Hugging Face / parquet datasets with images embedded as bytes -> conversation records
whose images live in an images store that clean manages (``OUT.images/`` beside OUT by default).

Two layouts, told apart by the schema: LLaVA-OneVision-Data (``image``: struct of ``bytes`` and
``path``, ``conversations``: [{from, value}]) and the_cauldron (``images``: list of such structs,
``texts``: [{user, assistant, source}]). Rows are read with pyarrow's ``iter_batches`` a few hundred at a
time, so memory does not grow with the file. Each image's bytes go to the store under the name of
their SHA-256 (``ab/abcdef....jpg``, the extension from the bytes), written once, atomically; the record
names that file, and the engine checks it like any other (`mmdata.clean.engine`). So
``mmdata shard OUT --images OUT.images`` needs no folder the user has to manage, and a rerun gives
the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from mmdata import storage
from mmdata.clean.checks import ImageChecker
from mmdata.clean.remote import as_path, check_reachable, one_writer
from mmdata.clean.engine import (
    Decider,
    Item,
    Originals,
    Progress,
    Stream,
    StructureOptions,
    check_max_text_chars,
    check_options,
    check_outputs,
    structure_objects,
)
from mmdata.clean.report import CleanReport, Sink, default_paths
from mmdata.errors import InputError
from mmdata.images import DEFAULT_MAX_PIXELS, sniff_format
from mmdata.procs import resolve_workers
from mmdata.records import DEFAULT_MAX_TEXT_CHARS, IMAGE_TOKEN

__all__ = ["LAYOUTS", "clean_hf", "default_store", "parquet_files"]

_ROWS = 256  # rows read at a time: the image bytes of one batch are all that is held

_EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}


class Layout(NamedTuple):
    """A parquet layout: its name, the columns that identify it, and the columns it reads."""

    name: str
    needs: tuple[str, ...]
    reads: tuple[str, ...]


LAYOUTS = (
    Layout("llava-onevision", ("image", "conversations"), ("id", "image", "conversations")),
    Layout("the_cauldron", ("images", "texts"), ("images", "texts")),
)


def default_store(out_path: Path) -> Path:
    """``OUT.images`` beside OUT (``clean.jsonl`` -> ``clean.images/``; on S3 a prefix beside OUT)."""
    text = str(out_path)
    return as_path(f"{text[:len(text) - len(out_path.suffix)] if out_path.suffix else text}.images")


def parquet_files(path: Path) -> list[Path]:
    """The parquet file, or every ``*.parquet`` under the folder in name order; InputError if none."""
    if storage.is_remote(path):
        return _remote_parquet_files(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise InputError(path, "no .parquet files in this folder")
        return files
    return [path]


def _remote_parquet_files(path: Path) -> list[Path]:
    """`parquet_files` for an ``s3://`` object or prefix (every ``*.parquet`` under it, in key order)."""
    import pyarrow.fs as pafs

    url = str(path)
    check_reachable(url)
    src, fs = storage.arrow_source(url)
    info = fs.get_file_info(src)  # type: ignore[union-attr]
    if info.type == pafs.FileType.File:
        return [path]
    if info.type == pafs.FileType.NotFound:
        raise InputError(url, "no such object or prefix")
    infos = fs.get_file_info(pafs.FileSelector(src, recursive=True))  # type: ignore[union-attr]
    keys = sorted(i.path[len(src):].lstrip("/") for i in infos
                  if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not keys:
        raise InputError(url, "no .parquet files under this prefix")
    return [as_path(f"{url.rstrip('/')}/{k}") for k in keys]


def _parquet_source(f: Path) -> Any:
    """What pyarrow's parquet readers take: the local path, or the object opened for random access."""
    if not storage.is_remote(f):
        return f
    src, fs = storage.arrow_source(f)
    return fs.open_input_file(src)  # type: ignore[union-attr]


def _layout(files: list[Path]) -> tuple[Layout, list[str]]:
    """The layout all files share, from their schemas, and the extra scalar columns kept on each record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    found: tuple[Layout, list[str]] | None = None
    for f in files:
        try:
            schema = pq.read_schema(_parquet_source(f))
        except (pa.ArrowException, OSError) as e:
            raise InputError(f, f"not a readable parquet file: {e}") from None
        names = set(schema.names)
        layout = next((lay for lay in LAYOUTS if set(lay.needs) <= names), None)
        if layout is None:
            raise InputError(f, "not a known parquet layout: expected columns image + conversations "
                                f"(LLaVA-OneVision-Data) or images + texts (the_cauldron), found {', '.join(schema.names)}")
        extra = [n for n in schema.names if n not in layout.reads and _scalar(schema.field(n).type)]
        if found is None:
            found = (layout, extra)
        elif found[0] != layout:
            raise InputError(f, f"layout {layout.name}, but {files[0].name} is {found[0].name}: give one layout at a time")
    assert found is not None
    return found


def _scalar(t: Any) -> bool:
    import pyarrow.types as pt

    return pt.is_string(t) or pt.is_large_string(t) or pt.is_integer(t) or pt.is_floating(t) or pt.is_boolean(t)


class ImageStore:
    """Content-addressed image files under one folder: ``put(bytes)`` returns the stable relative name."""

    def __init__(self, root: Path):
        self.root = root
        self.names: set[str] = set()

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        name = f"{digest[:2]}/{digest}.{_EXT.get(sniff_format(data[:16]) or '', 'bin')}"
        if name not in self.names:
            self.names.add(name)
            self._write(self.root / name, data)
        return name

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """Write once (a file of the right size is kept), atomically: a killed run leaves no partial file."""
        if storage.is_remote(path):  # an object appears only when complete (multipart completed last)
            if storage.exists(path) and storage.size(path) == len(data):
                return
            with storage.atomic_output(path) as f:
                f.write(data)
            return
        try:
            if path.stat().st_size == len(data):
                return
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _image_name(store: ImageStore, im: Any) -> str:
    """The store name of one image struct ``{bytes, path}``; without bytes, its path as given (so the
    check says missing_image, naming it)."""
    if isinstance(im, dict):
        data = im.get("bytes")
        if data:
            return store.put(data)
        path = im.get("path")
        return path if isinstance(path, str) else ""
    return ""


def onevision_record(row: dict[str, Any], store: ImageStore) -> dict[str, Any]:
    """A LLaVA-OneVision-Data row as a LLaVA record (``image`` null or absent: text-only)."""
    rec: dict[str, Any] = {}
    if row.get("id") is not None:
        rec["id"] = row["id"]
    if row.get("image") is not None:
        rec["image"] = _image_name(store, row["image"])
    rec["conversations"] = row.get("conversations")
    return rec


def cauldron_record(row: dict[str, Any], store: ImageStore) -> dict[str, Any]:
    """A the_cauldron row as a LLaVA record: each {user, assistant} text a human/gpt pair, the images
    as ``<image>`` lines before the first question when no turn places them, ``source`` kept."""
    images = [_image_name(store, im) for im in (row.get("images") or [])]
    texts = row.get("texts")
    rec: dict[str, Any] = {}
    if images:
        rec["image"] = images[0] if len(images) == 1 else images
    if not isinstance(texts, list):
        rec["texts"] = texts  # left for the record checks to call malformed
        return rec
    conv = []
    for t in texts:
        t = t if isinstance(t, dict) else {}
        conv.append({"from": "human", "value": t.get("user")})
        conv.append({"from": "gpt", "value": t.get("assistant")})
    if images and conv and isinstance(conv[0]["value"], str) \
            and not any(isinstance(c["value"], str) and IMAGE_TOKEN in c["value"] for c in conv[0::2]):
        conv[0]["value"] = (IMAGE_TOKEN + "\n") * len(images) + conv[0]["value"]
    rec["conversations"] = conv
    sources = {t.get("source") for t in texts if isinstance(t, dict)}
    if len(sources) == 1 and isinstance(next(iter(sources)), str):
        rec["source"] = next(iter(sources))
    return rec


_CONVERT = {"llava-onevision": onevision_record, "the_cauldron": cauldron_record}


def _items(files: list[Path], layout: Layout, extra: list[str], store: ImageStore, opts: StructureOptions,
           rows: int) -> Iterator[Item]:
    """Batches of converted records (image bytes into the store), structured here, in file and row order."""
    import pyarrow.parquet as pq

    convert = _CONVERT[layout.name]
    n = 0
    for f in files:
        # pre_buffer (pyarrow's default) reads every row group's column chunks up front: memory would
        # grow with the file (measured: 313 MB of Arrow memory for a 262 MB file, 80 MB without).
        pf = pq.ParquetFile(_parquet_source(f), pre_buffer=False)
        cols = [c for c in (*layout.reads, *extra) if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=rows, columns=cols):
            recs = []
            for row in batch.to_pylist():
                rec = convert(row, store)
                for c in extra:
                    if c not in rec:
                        rec[c] = row[c]
                recs.append(rec)
            del batch
            yield Item(n, recs, structure_objects(recs, n, opts))
            n += len(recs)


@one_writer  # an s3:// OUT: one run at a time
def clean_hf(
    input_path: str | Path,
    out_path: str | Path,
    *,
    images_store: str | Path | None = None,
    rejects_path: str | Path | None = None,
    report_path: str | Path | None = None,
    min_side: int = 28,
    max_aspect: float = 200,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    out_format: str = "llava",
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    rekey: bool = False,
    rows: int = _ROWS,
    progress: Progress | None = None,
) -> CleanReport:
    """Clean a parquet file (or a folder of them) with embedded images into OUT + rejects + report,
    the images into ``images_store`` (default ``OUT.images``)."""
    input_path, out_path = as_path(input_path), as_path(out_path)
    store_root = as_path(images_store) if images_store else default_store(out_path)
    rejects_path, report_path = default_paths(out_path, as_path(rejects_path) if rejects_path else None,
                                              as_path(report_path) if report_path else None)
    files = parquet_files(input_path)
    fmt = check_outputs(out_path, files, (rejects_path, report_path))
    check_options(min_side, max_aspect, max_pixels, out_format)
    check_max_text_chars(max_text_chars)
    if rows < 1:
        raise InputError(None, f"--rows must be >= 1 (got {rows})")
    layout, extra = _layout(files)
    if storage.is_remote(store_root):
        check_reachable(store_root)
    else:
        if store_root.exists() and not store_root.is_dir():
            raise InputError(store_root, "--images-store is not a folder")
        store_root.mkdir(parents=True, exist_ok=True)
    single = files == [input_path] if storage.is_remote(input_path) else input_path.is_file()
    stem = input_path.stem if single else input_path.name
    report = CleanReport(kind="hf", source=input_path.name, out=str(out_path), rejects=str(rejects_path),
                         report=str(report_path),
                         options={"min_side": min_side, "max_aspect": max_aspect, "max_pixels": max_pixels,
                                  "out_format": out_format, "max_text_chars": max_text_chars, "rekey": rekey,
                                  "layout": layout.name, "images_store": store_root.name})
    opts = StructureOptions(stem, "llava", out_format == "messages", fmt == "json", max_text_chars)
    store = ImageStore(store_root)
    nworkers = resolve_workers(workers)
    with ImageChecker(str(store_root), workers=nworkers, min_side=min_side, max_aspect=max_aspect,
                      max_pixels=max_pixels) as checker, \
            Sink(rejects_path, "jsonl") as rejects, Sink(out_path, fmt) as out:
        originals = Originals(None)
        dec = Decider(checker, out, rejects, report, input_path.name, originals.serialise, rekey=rekey)
        report.input = Stream(dec, originals, None, nworkers).run(_items(files, layout, extra, store, opts, rows),
                                                                  progress)
        report.written = out.count
        report.images_checked = checker.checked
        report.extra = {"files": [f.name for f in files], "images_in_store": len(store.names)}
        if rekey:
            report.extra["rekeyed"] = dec.rekeyed
    report.write(report_path)
    return report
