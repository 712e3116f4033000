"""Hugging Face `datasets` views of mmdata's files, for users who analyse data with that API.

`index_dataset` wraps a shard folder's `index.parquet` (one row per sample: key, shard, id, image
tokens, text length, ...) without copying it; `records_dataset` turns a cleaned JSON / JSONL file
into a Dataset, streaming it through `mmdata.io` so a 665k-record file never sits in memory as
Python objects. `datasets` is imported only here, on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mmdata.errors import InputError
from mmdata.io import iter_json_records, loads

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["index_dataset", "records_dataset", "record_of"]


def index_dataset(out_dir: str | Path) -> "datasets.Dataset":
    """The shard index of ``out_dir`` as an Arrow-backed `datasets.Dataset` (no copy, no cache files).

    Example: ``index_dataset("shards/").filter(lambda r: r["image_tokens"] > 1000)["id"]``.
    """
    import datasets
    import pyarrow.parquet as pq

    path = Path(out_dir)
    if path.is_dir():
        path = path / "index.parquet"
    if not path.is_file():
        raise InputError(path, "no shard index here (expected OUTDIR/index.parquet from `mmdata shard`)")
    return datasets.Dataset(pq.read_table(path))


def _conversation_rows(path: Path) -> Iterator[dict[str, Any]]:
    # Keep the nested record as one JSON string column next to flat, typed columns: conversation
    # records have optional keys and mixed `image` types (str | list) that Arrow cannot unify.
    from mmdata.io import dumps

    for index, _line, rec in iter_json_records(path):
        if not isinstance(rec, dict):
            raise InputError(path, f"record {index} is not a JSON object: not a cleaned file")
        image = rec.get("image")
        images = [image] if isinstance(image, str) else list(image or [])
        yield {
            "id": str(rec.get("id", "")),
            "images": images,
            "n_turns": len(rec.get("conversations") or rec.get("messages") or []),
            "record": dumps(rec).decode("utf-8"),
        }


def records_dataset(path: str | Path, cache_dir: str | Path | None = None) -> "datasets.Dataset":
    """A cleaned conversation file (``mmdata clean`` output) as a `datasets.Dataset`.

    Columns: ``id``, ``images`` (list of paths), ``n_turns`` and ``record`` (the whole record as
    JSON; ``json.loads`` it, or use :func:`record_of`). Built with ``Dataset.from_generator``, so it is
    written to the `datasets` cache (``cache_dir``) in streaming fashion, not held in memory.
    """
    import datasets

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    features = datasets.Features({
        "id": datasets.Value("string"),
        "images": datasets.Sequence(datasets.Value("string")),
        "n_turns": datasets.Value("int32"),
        "record": datasets.Value("string"),
    })
    return datasets.Dataset.from_generator(
        _conversation_rows, gen_kwargs={"path": path}, features=features,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )


def record_of(row: dict[str, Any]) -> dict[str, Any]:
    """The original conversation record of a :func:`records_dataset` row."""
    return loads(row["record"])
