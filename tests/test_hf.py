"""`datasets` views: the shard index and a cleaned file read back exactly as mmdata wrote them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fixtures.generate import generate
from mmdata.errors import InputError
from mmdata.hf import index_dataset, record_of, records_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from mmdata.clean import clean_llava
    from mmdata.shard import write_shards

    root = tmp_path_factory.mktemp("hf")
    fx = generate(root / "fx")
    out = root / "clean.jsonl"
    clean_llava(fx["llava_json"], fx["images"], out, workers=1)
    write_shards([out], fx["images"], root / "shards", max_res=448, workers=1)
    return {"clean": out, "shards": root / "shards", "cache": root / "hf-cache"}


def test_index_dataset_is_the_index(data):
    ds = index_dataset(data["shards"])
    table = pq.read_table(data["shards"] / "index.parquet")
    assert ds.num_rows == table.num_rows and ds.column_names == table.column_names
    assert ds["id"] == table.column("id").to_pylist()
    big = ds.filter(lambda r: r["image_tokens"] > 100)
    assert sorted(big["key"]) == sorted(k for k, t in zip(ds["key"], ds["image_tokens"]) if t > 100)


def test_records_dataset_round_trips_every_record(data):
    ds = records_dataset(data["clean"], cache_dir=data["cache"])
    recs = [json.loads(line) for line in data["clean"].read_text().splitlines()]
    assert ds.num_rows == len(recs)
    assert [record_of(r) for r in ds] == recs
    multi = [r for r in ds if len(r["images"]) > 1]
    assert multi and all(isinstance(record_of(r)["image"], list) for r in multi)


def test_missing_paths_are_input_errors(tmp_path: Path):
    with pytest.raises(InputError, match="index.parquet"):
        index_dataset(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        records_dataset(tmp_path / "nope.jsonl")
