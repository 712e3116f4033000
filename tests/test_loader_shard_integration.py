"""The real shard writer's output through the loader: every written sample comes out once, intact."""

import numpy as np
import pytest

from loader_helpers import all_rows
from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
from mmdata.loader.lengths import read_index, text_tokens

writer = pytest.importorskip("mmdata.shard.writer")
generate = pytest.importorskip("fixtures.generate")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls")
    paths = generate.generate_llava_scale(root / "src", n_records=60, n_images=12, image_size=(96, 64), seed=3)
    plain = root / "plain"
    writer.write_shards(paths["llava_json"], paths["images"], plain, samples_per_shard=16, workers=1)
    counted = root / "counted"
    writer.write_shards(paths["llava_json"], paths["images"], counted, samples_per_shard=16, workers=1,
                        tokenizer=str(load_tokenizer(None).path), template="qwen2vl")
    return plain, counted


def test_writer_output_loads_every_sample_once(made, tmp_path):
    plain, _ = made
    tok = load_tokenizer(None)
    idx = read_index(plain)
    ld = PackedLoader(plain, tokenizer=tok, config=LoaderConfig(seq_len=1024, epochs=1, cache_dir=str(tmp_path)),
                      num_workers=2)
    rows = all_rows(ld)
    ids = [s for b in rows for s in b["sample_ids"]]
    assert sorted(ids) == sorted(idx.ids.tolist())
    st = ld.stats()
    assert st["bad_samples"] == 0 and st["unplannable"] == 0
    for b in rows:
        grids = b["image_grid_thw"]
        assert int((b["input_ids"] == tok.image_pad_id).sum()) * 4 == int(grids.prod(1).sum()) == b["pixel_values"].shape[0]


def test_index_text_tokens_match_counting_the_json(made, tmp_path):
    plain, counted = made
    tok = load_tokenizer(None)
    a = read_index(counted)
    assert a.text_tokens is not None  # the writer recorded tokenizer sha + template: used as is
    b = text_tokens(read_index(plain), tok, "qwen2vl", cache_dir=tmp_path)
    assert np.array_equal(text_tokens(a, tok, "qwen2vl"), b)
    assert (b > 0).all()
    # a second call reads the cache file instead of the tars
    assert list(tmp_path.glob("text-tokens-*.npy"))
