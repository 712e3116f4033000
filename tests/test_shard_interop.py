"""Upstream readers take our shards as they are: webdataset groups members by key, wids indexes them."""

from __future__ import annotations

import json

import pytest
from needs import need
from test_shard_writer import KEYS, make_set

from mmdata.shard import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    src, img = make_set(root)
    out = root / "out"
    write_shards([src], img, out, samples_per_shard=5, workers=1)
    return out, json.loads((out / "manifest.json").read_text())


def test_webdataset_reads_every_sample_with_its_members(shards):
    wds = need("webdataset")
    out, m = shards
    urls = [str(out / s["name"]) for s in m["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == KEYS  # record positions (rejects leave gaps)
    for s in samples:
        meta = json.loads(s["json"])
        n = len(meta["images"])
        exts = sorted(k for k in s if not k.startswith("__"))
        if n == 0:
            assert exts == ["json"]
        elif n == 1:
            assert exts == ["jpg", "json"]
        else:
            assert exts == sorted(["json"] + [f"{i}.jpg" for i in range(n)])
    decoded = next(iter(wds.WebDataset(urls[:1], shardshuffle=False).decode("pil")))
    assert decoded["jpg"].size == (448, 336) and decoded["json"]["id"] == "coco.0"


def test_wids_indexes_every_sample(shards):
    wids = need("wids")
    out, m = shards
    ds = wids.ShardListDataset([{"url": str(out / s["name"]), "nsamples": s["samples"]} for s in m["shards"]],
                               transformations=[])
    assert len(ds) == m["samples"]
    keys = []
    for i in range(len(ds)):
        s = ds[i]
        keys.append(s["__key__"])
        meta = json.loads(s[".json"].read())
        assert meta["image_tokens"] == sum(i["image_tokens"] for i in meta["images"])
        assert (".jpg" in s) == (len(meta["images"]) == 1)
    assert keys == KEYS  # record positions (rejects leave gaps)
    multi = ds[13]
    assert ".0.jpg" in multi and ".1.jpg" in multi
