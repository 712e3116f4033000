"""mmdata.format: one reader for every tar read, the typed sample json round-trips byte for byte,
the index schema and file names are the ones the writer uses."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from test_shard_writer import make_set

from mmdata.format import index as fmt_index
from mmdata.format import names
from mmdata.format.sample import SampleError, ShardSample
from mmdata.format.tar import TarFormatError, parse_sample, read_first_member
from mmdata.shard import write_shards


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt")
    src, img = make_set(root)
    o = root / "out"
    write_shards([src], img, o, samples_per_shard=5, workers=1)
    return o


def _rows(out):
    return pq.read_table(out / names.INDEX).to_pylist()


def test_file_names_are_the_writers(out):
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [names.shard_name(i) for i in range(4)] + [names.INDEX, names.MANIFEST, names.REJECTS])
    assert names.shard_name(12) == "shard-000012.tar" and names.shard_number("shard-000012.tar") == 12
    assert names.shard_number(".shard-000012.tar.tmp") is None and names.TMP_RE.match(names.tmp_name("shard-000012.tar"))


def test_index_has_the_schema_defined_once(out):
    assert pq.read_schema(out / names.INDEX).remove_metadata() == fmt_index.schema(False)


def test_every_sample_json_round_trips_byte_for_byte(out):
    for r in _rows(out):
        data = (out / r["shard"]).read_bytes()[r["offset"]:r["offset"] + r["nbytes"]]
        members = parse_sample(data, base=r["offset"])
        assert members[0].name == f"{r['key']}.json" and members[0].offset == r["offset"]
        s = ShardSample.from_json(members[0].data)
        assert s.to_json() == members[0].data
        assert s.id == r["id"] and s.image_tokens == r["image_tokens"]
        assert [m.width for m in s.images] == r["widths"] and [m.height for m in s.images] == r["heights"]
        with open(out / r["shard"], "rb") as f:
            assert read_first_member(f, r["offset"]) == members[0].data


def test_the_reader_rejects_a_damaged_header(out):
    r = _rows(out)[1]
    data = bytearray((out / r["shard"]).read_bytes()[r["offset"]:r["offset"] + r["nbytes"]])
    data[3] ^= 0xFF  # inside the first member's name: the checksum no longer matches
    with pytest.raises(TarFormatError, match=f"at byte {r['offset']}: tar header checksum"):
        parse_sample(bytes(data), base=r["offset"])
    with pytest.raises(TarFormatError, match="truncated"):
        parse_sample((out / r["shard"]).read_bytes()[r["offset"]:r["offset"] + 700])


def test_the_loader_and_lengths_use_the_same_reader(out):
    from mmdata.loader.dataset import BadSample, parse_members

    r = _rows(out)[0]
    data = (out / r["shard"]).read_bytes()[r["offset"]:r["offset"] + r["nbytes"]]
    assert [n for n, _ in parse_members(data)][0] == f"{r['key']}.json"
    with pytest.raises(BadSample) as e:
        parse_members(data[:-600])
    assert e.value.reason == "unreadable_member" and "truncated" in e.value.detail


@pytest.mark.parametrize("data, why", [
    (b"{nope", "invalid JSON"),
    (b"[1, 2]", "not an object"),
    (b'{"images": 3}', "'images' is not a list"),
    (b'{"images": [{"width": 1}]}', "image 0: no usable width/height/image_tokens"),
])
def test_a_bad_sample_json_is_a_broken_json_reason(data, why):
    with pytest.raises(SampleError) as e:
        ShardSample.from_json(data)
    assert e.value.reason == "broken_json" and why in e.value.detail
