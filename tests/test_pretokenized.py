"""Pre-tokenised shards (``mmdata shard --tokenizer``): each sample carries ``{key}.ids.npy`` and the
loader uses it instead of calling the tokenizer, with batches bit-identical to encoding at train time."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loader_helpers import all_rows, same_batch
from needs import need
from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
from mmdata.shard.writer import write_shards

SIZES = [(96, 64), (64, 128), (200, 150), (56, 56), (120, 90)]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The same records sharded three ways: no tokenizer, --tokenizer (1 worker), --tokenizer (2 workers)."""
    root = tmp_path_factory.mktemp("pretok")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}.jpg", quality=80)
    words = "red car blue sky dog runs fast small house tree green field".split()
    recs = []
    for i in range(40):
        q = " ".join(rng.choice(words, int(rng.integers(2, 20))))
        a = " ".join(rng.choice(words, int(rng.integers(2, 30))))
        k = i % 4  # 0: text only, 1: one image, 2-3: several
        rec = {"id": f"r{i}", "conversations": [{"from": "human", "value": "<image>\n" * k + q},
                                                {"from": "gpt", "value": a}]}
        if i % 5 == 0:
            rec["conversations"] += [{"from": "human", "value": "And then?"}, {"from": "gpt", "value": "Nothing."}]
        if k == 1:
            rec["image"] = f"{i % 5}.jpg"
        elif k:
            rec["image"] = [f"{(i + j) % 5}.jpg" for j in range(k)]
        recs.append(rec)
    (root / "c.json").write_text(json.dumps(recs))
    tok = load_tokenizer(None)
    common = dict(max_res=224, max_image_tokens=64, samples_per_shard=12)
    write_shards([root / "c.json"], root / "img", root / "plain", workers=1, **common)
    write_shards([root / "c.json"], root / "img", root / "pre", workers=1, tokenizer=str(tok.path), **common)
    write_shards([root / "c.json"], root / "img", root / "pre2", workers=2, tokenizer=str(tok.path), **common)
    return root, tok


def _rows(path: Path, tok, cache: Path, template: str = "qwen2vl", workers: int = 0):
    ld = PackedLoader(path, tokenizer=tok, config=LoaderConfig(seq_len=512, epochs=1, cache_dir=str(cache),
                                                               template=template), num_workers=workers)
    return all_rows(ld), ld


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_every_sample_has_ids_after_its_json_and_bytes_do_not_depend_on_workers(made):
    root, _ = made
    import tarfile

    names = [m.name for t in sorted((root / "pre").glob("*.tar")) for m in tarfile.open(t)]
    assert names[:3] == ["000000000.json", "000000000.ids.npy", "000000001.json"]  # r0: text only
    assert names[3:6] == ["000000001.ids.npy", "000000001.jpg", "000000002.json"]
    assert sum(n.endswith(".ids.npy") for n in names) == 40
    for a in sorted((root / "pre").iterdir()):
        assert _sha(a) == _sha(root / "pre2" / a.name), a.name
    m = json.loads((root / "pre" / "manifest.json").read_text())
    assert m["options"]["text_tokens"]["template"] == "qwen2vl"


def test_ids_member_is_the_template_encoding(made):
    root, tok = made
    import tarfile

    from mmdata.loader.templates import encode_conversation

    with tarfile.open(root / "pre" / "shard-000000.tar") as t:
        rec = json.load(t.extractfile("000000002.json"))
        arr = np.load(io.BytesIO(t.extractfile("000000002.ids.npy").read()))
    enc = encode_conversation(rec, tok, "qwen2vl", [im["image_tokens"] for im in rec["images"]])
    assert arr.dtype == np.int32 and arr.shape == (2, len(enc.input_ids))
    assert np.array_equal(arr[0], enc.input_ids) and np.array_equal(arr[1], enc.labels)


def test_batches_are_bit_identical_and_the_tokenizer_is_not_called(made, tmp_path, monkeypatch):
    root, tok = made
    want, _ = _rows(root / "plain", tok, tmp_path / "a")
    import mmdata.loader.templates as templates

    def boom(*a, **k):
        raise AssertionError("tokenizer called on the pre-tokenised path")

    monkeypatch.setattr(templates, "encode_conversation", boom)
    monkeypatch.setattr(tok, "encode_batch", boom)
    got, ld = _rows(root / "pre", tok, tmp_path / "b")
    assert len(got) == len(want) > 1
    for a, b in zip(got, want):
        assert a["sample_ids"] == b["sample_ids"]
        assert same_batch(a, b)
    st = ld.stats()
    assert st["samples"] == 40 and st["bad_samples"] == 0 and st["stale_ids"] == 0


def test_with_dataloader_workers_too(made, tmp_path):
    root, tok = made
    want, _ = _rows(root / "plain", tok, tmp_path / "a")
    got, _ = _rows(root / "pre", tok, tmp_path / "b", workers=2)
    assert len(got) == len(want) and all(same_batch(a, b) for a, b in zip(got, want))


def test_a_template_mismatch_encodes_at_load_time(made, tmp_path, monkeypatch):
    root, tok = made
    want, _ = _rows(root / "plain", tok, tmp_path / "a", template="llava_v1")
    import mmdata.loader.templates as templates

    calls = []
    orig = templates.encode_conversation
    monkeypatch.setattr(templates, "encode_conversation", lambda *a, **k: calls.append(1) or orig(*a, **k))
    got, ld = _rows(root / "pre", tok, tmp_path / "b", template="llava_v1")
    assert len(calls) == 40
    assert len(got) == len(want) and all(same_batch(a, b) for a, b in zip(got, want))
    assert ld.stats()["stale_ids"] == 0


def _corrupt_first_label(src: Path, dst: Path) -> None:
    """Copy a shard folder, setting the first label of sample 000000001's ids to 7 (same size, so the
    index offsets stay right)."""
    import shutil

    shutil.copytree(src, dst)
    tar = dst / "shard-000000.tar"
    data = bytearray(tar.read_bytes())
    body = data.index(b"000000001.ids.npy\x00") + 512  # the member's data, after its tar header
    assert bytes(data[body:body + 8]) == b"\x93NUMPY\x01\x00"
    start = body + 10 + int.from_bytes(data[body + 8:body + 10], "little")  # npy v1: 2-byte header length
    header = bytes(data[body:start]).decode("latin1")
    n = int(header.split("'shape': (2, ")[1].split(")")[0])
    assert np.frombuffer(bytes(data[start + 4 * n:start + 4 * n + 4]), "<i4")[0] == -100
    data[start + 4 * n:start + 4 * n + 4] = np.int32(7).tobytes()  # labels[0]
    tar.write_bytes(bytes(data))


def test_inconsistent_ids_fall_back_and_are_counted(made, tmp_path):
    root, tok = made
    _corrupt_first_label(root / "pre", tmp_path / "bad")
    want, _ = _rows(root / "plain", tok, tmp_path / "a")
    got, ld = _rows(tmp_path / "bad", tok, tmp_path / "b")
    assert len(got) == len(want) and all(same_batch(a, b) for a, b in zip(got, want))
    st = ld.stats()
    assert st["stale_ids"] == 1 and st["bad_samples"] == 0


def test_verify_accepts_ids_and_flags_bad_ones(made, tmp_path):
    from mmdata.inspect.verify import verify_shards

    root, _ = made
    assert verify_shards([root / "pre"], workers=1) == []
    _corrupt_first_label(root / "pre", tmp_path / "bad")
    probs = verify_shards([tmp_path / "bad"], workers=1)
    assert [(p.key, p.code) for p in probs if p.code != "sha256_mismatch"] == [("000000001", "bad_ids")]
    assert "first label must be -100" in [p for p in probs if p.code == "bad_ids"][0].message


def test_upstream_webdataset_groups_the_ids_with_the_sample(made):
    wds = need("webdataset")
    root, _ = made
    urls = [str(p) for p in sorted((root / "pre").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 40
    assert set(samples[1]) >= {"json", "ids.npy", "jpg"} and "0.jpg" in samples[2]
    dec = next(iter(wds.WebDataset(urls[:1], shardshuffle=False).decode()))
    assert dec["ids.npy"].dtype == np.int32 and dec["ids.npy"].shape[0] == 2


def test_truncation_cuts_pre_tokenised_ids_like_encoded_ones(made, tmp_path):
    root, tok = made

    def rows(path, cache):
        cfg = LoaderConfig(seq_len=96, epochs=1, cache_dir=str(cache), overlong="truncate")
        ld = PackedLoader(path, tokenizer=tok, config=cfg, num_workers=0)
        return all_rows(ld), ld.stats()

    want, st_want = rows(root / "plain", tmp_path / "a")
    got, st = rows(root / "pre", tmp_path / "b")
    assert st["truncated"] == st_want["truncated"] > 0 and st["stale_ids"] == 0
    assert len(got) == len(want) and all(same_batch(a, b) for a, b in zip(got, want))
