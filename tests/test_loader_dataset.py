"""PackedLoader end to end on tiny shards: document isolation, exact and elastic resume, partitions,
bad samples and their budget."""

import logging

import pytest
import torch

from loader_helpers import all_rows, make_records, same_batch, write_shards
from mmdata.errors import MMDataError
from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer, normalize_pixels
from mmdata.models.rope import mrope_position_ids
from mmdata.text.templates import encode_conversation
from mmdata.models.rules import smart_resize

SEQ = 384


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def records():
    return make_records(60, seed=5, max_images=3, text_only_every=9)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, records):
    return write_shards(tmp_path_factory.mktemp("shards") / "a", records, samples_per_shard=5)


def loader(path, tok, world=1, rank=0, workers=0, **kw):
    kw.setdefault("seq_len", SEQ)
    kw.setdefault("window_samples", 20)
    return PackedLoader(path, tokenizer=tok, config=LoaderConfig(**kw), rank=rank, world_size=world, num_workers=workers)


def docs_of(batch):
    cu = batch["cu_seqlens"].tolist()
    return [(a, b) for a, b in zip(cu[:-1], cu[1:])]


def test_rows_are_canonical_and_documents_isolated(shards, records, tok):
    by_id = {r["id"]: r for r in records}
    rows = all_rows(loader(shards, tok, epochs=1))
    seen = []
    for b in rows:
        T = b["input_ids"].shape[1]
        assert b["input_ids"].dtype == b["labels"].dtype == b["position_ids"].dtype == torch.int64
        assert b["cu_seqlens"].dtype == torch.int32 and b["cu_seqlens"][0] == 0 and b["cu_seqlens"][-1] == T <= SEQ
        assert b["position_ids"].shape == (3, 1, T) and b["attention_mask"].all()
        assert torch.equal(b["seqlens"], torch.diff(b["cu_seqlens"]).long())
        assert b["num_real_tokens"] == T and b["num_loss_tokens"] == int((b["labels"] != -100).sum())
        grids = b["image_grid_thw"]
        assert b["pixel_values"].shape == (int(grids.prod(1).sum()), 1176)
        assert int((b["input_ids"] == tok.image_pad_id).sum()) == int(grids.prod(1).sum()) // 4
        g = 0
        for (a, e), sid in zip(docs_of(b), b["sample_ids"]):
            rec = by_id[sid]
            sizes = rec.get("_sizes", [])
            toks = [(hh // 28) * (ww // 28) for hh, ww in (smart_resize(h, w) for w, h in sizes)]
            enc = encode_conversation({k: v for k, v in rec.items() if k != "_sizes"}, tok, "qwen2vl", toks)
            assert b["input_ids"][0, a:e].tolist() == enc.input_ids.tolist()
            assert b["labels"][0, a:e].tolist() == enc.labels.tolist() and b["labels"][0, a] == -100
            doc_grid = grids[g:g + len(sizes)]
            g += len(sizes)
            want = mrope_position_ids(enc.input_ids, doc_grid.numpy(), 2, tok.vision_start_id, tok.image_pad_id)
            assert b["position_ids"][:, 0, a:e].tolist() == want.tolist()
            assert b["position_ids"][:, 0, a].tolist() == [0, 0, 0]
            assert b["text_position_ids"][0, a:e].tolist() == list(range(e - a))
            seen.append(sid)
        assert g == len(grids)
        # doc starts are exactly where the temporal position is 0 (INTEGRATION.md s.0)
        starts = torch.nonzero(b["position_ids"][0, 0] == 0).flatten().tolist()
        assert starts == b["cu_seqlens"][:-1].tolist()
    assert sorted(seen) == sorted(by_id)


def test_workers_do_not_change_the_output(shards, tok):
    a = all_rows(loader(shards, tok, epochs=2, workers=0))
    b = all_rows(loader(shards, tok, epochs=2, workers=2))
    assert len(a) == len(b) > 0
    assert all(same_batch(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("where", ["mid-epoch", "next epoch"])
def test_exact_resume(shards, tok, workers, where):
    full = loader(shards, tok, workers=workers)
    n_epoch = full.rows_per_epoch
    k = 3 if where == "mid-epoch" else n_epoch + 2
    total = n_epoch + 5
    ref = all_rows(full, total)
    first = loader(shards, tok, workers=workers)
    got = all_rows(first, k)
    state = first.state_dict()
    assert state["consumed_rows"] == k
    assert (state["epoch"], state["row"]) == ((0, 3) if k == 3 else (1, 2))
    resumed = loader(shards, tok, workers=workers)
    resumed.load_state_dict(state)
    got += all_rows(resumed, total - k)
    assert len(got) == total
    assert all(same_batch(x, y) for x, y in zip(ref, got))
    assert not all(same_batch(x, y) for x, y in zip(ref[:n_epoch], ref[n_epoch:2 * n_epoch]))  # epochs differ


def test_state_is_arithmetic_and_checked(shards, tok):
    a = loader(shards, tok)
    all_rows(a, 4)
    st = a.state_dict()
    assert (st["epoch"], st["row"]) == (0, 4)
    other = loader(shards, tok, seed=1)
    with pytest.raises(MMDataError, match="seed 0"):
        other.load_state_dict(st)
    longer = loader(shards, tok, seq_len=SEQ * 2)
    with pytest.raises(MMDataError, match="another plan"):
        longer.load_state_dict(st)
    b = loader(shards, tok)
    b.restore_state(a.save_state())
    assert b.state_dict() == st


def ids_of(rows):
    return [s for b in rows for s in b["sample_ids"]]


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 3)])
def test_elastic_restore_no_repeat_no_gap(shards, records, tok, before, after):
    gbs = 6  # constant global batch, in rows
    steps = 2
    olds = [loader(shards, tok, world=before, rank=r, epochs=1) for r in range(before)]
    consumed = []
    for o in olds:
        consumed += ids_of(all_rows(o, steps * gbs // before))
    states = [o.state_dict() for o in olds]
    pos = [(s["epoch"], s["row"], s["consumed_rows"]) for s in states]
    assert pos == [(0, steps * gbs, steps * gbs)] * before  # every rank saves the same position
    for r in range(after):
        new = loader(shards, tok, world=after, rank=r, epochs=1)
        new.load_state_dict(states[0])
        consumed += ids_of(all_rows(new))
    assert sorted(consumed) == sorted(r["id"] for r in records)


@pytest.mark.parametrize("world,workers", [(2, 2), (3, 1)])
def test_rank_worker_partition_covers_data_once(shards, records, tok, world, workers):
    got = []
    for r in range(world):
        got += ids_of(all_rows(loader(shards, tok, world=world, rank=r, workers=workers, epochs=1)))
    assert sorted(got) == sorted(r["id"] for r in records)


def test_padding_and_uint8_pixels(shards, tok):
    f = all_rows(loader(shards, tok, epochs=1), 3)
    p = all_rows(loader(shards, tok, epochs=1, pad_to_seq_len=True, pixel_dtype="uint8"), 3)
    for x, y in zip(f, p):
        T = x["input_ids"].shape[1]
        assert y["input_ids"].shape[1] == SEQ
        assert torch.equal(y["input_ids"][:, :T], x["input_ids"])
        assert (y["input_ids"][0, T:] == tok.pad_id).all() and (y["labels"][0, T:] == -100).all()
        assert y["attention_mask"][0, T:].sum() == 0 and y["position_ids"][:, :, T:].abs().sum() == 0
        assert torch.equal(y["cu_seqlens"], x["cu_seqlens"]) and y["cu_seqlens_padded"][-1] == SEQ
        assert y["pixel_values"].dtype == torch.uint8
        assert torch.allclose(normalize_pixels(y["pixel_values"]), x["pixel_values"], atol=1e-6)


def test_bad_samples_skipped_counted_and_budgeted(tmp_path, tok, caplog):
    recs = make_records(24, seed=9, max_images=1)
    d = write_shards(tmp_path / "bad", recs, samples_per_shard=4, corrupt={3: "json", 7: "image", 11: "tokens"})
    with caplog.at_level(logging.WARNING, logger="mmdata.loader"):
        ld = loader(d, tok, epochs=1, bad_sample_budget=5)
        got = ids_of(all_rows(ld))
    assert sorted(got) == sorted(r["id"] for i, r in enumerate(recs) if i not in (3, 7, 11))
    st = ld.stats()
    assert st["unplannable"] == 1
    assert st["bad_samples"] == 2 and st["bad_by_reason"] == {"decode_error": 1, "image_token_mismatch": 1}
    assert "shard-000001.tar key 000000007: decode_error" in caplog.text
    assert "shard-000002.tar key 000000011: image_token_mismatch" in caplog.text
    # deterministic: a rerun skips the same samples in the same rows
    assert ids_of(all_rows(loader(d, tok, epochs=1, bad_sample_budget=5))) == got
    with pytest.raises(MMDataError, match="bad sample budget exceeded: 3 bad samples > bad_sample_budget 2"):
        all_rows(loader(d, tok, epochs=1, bad_sample_budget=2))
    with pytest.raises(MMDataError, match="over bad_sample_budget 0"):
        loader(d, tok, bad_sample_budget=0)


def test_overlong_drop_or_truncate(tmp_path, tok):
    recs = make_records(8, seed=2, max_images=1)
    recs[2]["conversations"][1]["value"] = " ".join(["word"] * 400)
    d = write_shards(tmp_path / "long", recs, samples_per_shard=4)
    drop = loader(d, tok, epochs=1, seq_len=256)
    got = ids_of(all_rows(drop))
    assert recs[2]["id"] not in got and len(got) == 7
    assert drop.stats()["planned_dropped"] == 1
    cut = loader(d, tok, epochs=1, seq_len=256, overlong="truncate")
    rows = all_rows(cut)
    assert sorted(ids_of(rows)) == sorted(r["id"] for r in recs)
    (b,) = [b for b in rows if recs[2]["id"] in b["sample_ids"]]
    k = b["sample_ids"].index(recs[2]["id"])
    a, e = docs_of(b)[k]
    assert e - a == 256
    seg = b["input_ids"][0, a:e]
    assert int((seg == tok.vision_start_id).sum()) == int((seg == tok.vision_end_id).sum()) == 1
    assert cut.stats()["truncated"] == 1


def test_blending_two_sets(tmp_path, tok):
    a = write_shards(tmp_path / "a", make_records(30, seed=1), samples_per_shard=5)
    b = write_shards(tmp_path / "b", make_records(10, seed=2), samples_per_shard=5, start=0)
    mixed = PackedLoader([a, b], tokenizer=tok, config=LoaderConfig(seq_len=SEQ, epochs=1), num_workers=0)
    ids = ids_of(all_rows(mixed))
    assert sorted(ids) == sorted([f"s1-{i}" for i in range(30)] + [f"s2-{i}" for i in range(10)])
    w = PackedLoader([a, b], tokenizer=tok, config=LoaderConfig(seq_len=SEQ, epochs=2), num_workers=0, weights=[1, 1])
    ids = ids_of(all_rows(w))
    assert sum(i.startswith("s2-") for i in ids) == 40  # 20 per epoch: set b upsampled 2x
    assert sum(i.startswith("s1-") for i in ids) == 40


def test_restore_decodes_nothing_before_the_position(shards, tok, monkeypatch):
    from mmdata.loader.dataset import RowBuilder

    a = loader(shards, tok)
    all_rows(a, 7)
    st = a.state_dict()
    calls = []
    orig = RowBuilder.encode
    monkeypatch.setattr(RowBuilder, "encode", lambda self, s, i: calls.append(i) or orig(self, s, i))
    b = loader(shards, tok)
    b.load_state_dict(st)
    row = next(b)
    assert len(calls) == len(row["sample_ids"])  # only the row after the position was read


def test_missing_or_foreign_folder_is_a_clear_input_error(tmp_path, tok):
    from mmdata.errors import InputError

    with pytest.raises(InputError, match="shard folder not found") as e:
        PackedLoader(tmp_path / "nope", tokenizer=tok)
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no index.parquet"):
        PackedLoader(tmp_path / "empty", tokenizer=tok)


def test_seek_by_consumed_rows_matches_state(shards, tok):
    a = loader(shards, tok)
    n = a.rows_per_epoch + 4
    all_rows(a, n)
    b = loader(shards, tok)
    b.seek(n)
    st_a, st_b = a.state_dict(), b.state_dict()
    assert (st_b["epoch"], st_b["row"], st_b["consumed_rows"]) == (st_a["epoch"], st_a["row"], n) == (1, 4, n)
    assert same_batch(next(a), next(b))


def test_truncate_never_cuts_inside_an_image_block(tmp_path, tok):
    rec = {"id": "late-image", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"},
        {"from": "gpt", "value": " ".join(["answer"] * 120)},
        {"from": "human", "value": "<image>\nAnd this one?"},
        {"from": "gpt", "value": "Also a car."}], "_sizes": [(56, 56), (112, 112)]}
    d = write_shards(tmp_path / "late", [rec], samples_per_shard=1)
    full = encode_conversation({k: v for k, v in rec.items() if k != "_sizes"}, tok, "qwen2vl", [4, 16])
    second_start = [i for i, t in enumerate(full.input_ids.tolist()) if t == tok.vision_start_id][1]
    seq = second_start + 5  # the plain cut would land inside the second image's pads
    (b,) = all_rows(loader(d, tok, epochs=1, seq_len=seq, overlong="truncate"))
    assert b["input_ids"][0].tolist() == full.input_ids[:second_start].tolist()
    assert b["labels"][0, 1:].tolist() == full.labels[1:second_start].tolist()
    assert b["image_grid_thw"].tolist() == [[1, 4, 4]]  # the first image only
    assert b["pixel_values"].shape == (16, 1176)
    assert int((b["input_ids"] == tok.image_pad_id).sum()) == 4


def test_a_stored_size_the_processor_would_change_is_a_bad_sample_never_resized(tmp_path, tok):
    """CONTRACT s.3: the loader never resizes. Shards from before exact sizes (300x200 stored; the
    processor would feed 308x196) are refused per sample with the fix in the detail."""
    recs = make_records(8, seed=2, max_images=1, sizes=((56, 56), (300, 200)))
    d = write_shards(tmp_path / "old", recs, samples_per_shard=4)
    ld = loader(d, tok, epochs=1, bad_sample_budget=8)
    got = ids_of(all_rows(ld))
    old = [r["id"] for r in recs if (300, 200) in r.get("_sizes", [])]
    assert old and sorted(got) == sorted(r["id"] for r in recs if r["id"] not in old)
    assert ld.stats()["bad_by_reason"] == {"image_size_mismatch": len(old)}
