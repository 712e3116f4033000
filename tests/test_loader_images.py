"""``pixel_dtype="images"``: the loader ships a row's decoded uint8 images and the device makes the
patches; after ``pixel_values_from_images`` every batch is bit-identical to the float32 / uint8 rows,
and both equal the numpy reference of Hugging Face's patch order (decode_frame + fill_rows)."""

import numpy as np
import pytest
import torch

from loader_helpers import all_rows, make_records, write_shards
from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
from mmdata.loader.adapters import _images
from mmdata.loader.pixels import decode_frame, fill_rows
from mmdata.models.patches import pixel_values_from_images

SEQ = 384


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    recs = make_records(40, seed=11, max_images=3, text_only_every=7)
    return write_shards(tmp_path_factory.mktemp("img") / "a", recs, samples_per_shard=5,
                        corrupt={4: "image", 9: "image"})


def rows(path, tok, workers=0, **kw):
    cfg = LoaderConfig(seq_len=SEQ, window_samples=20, epochs=1, bad_sample_budget=5, **kw)
    ld = PackedLoader(path, tokenizer=tok, config=cfg, num_workers=workers)
    return all_rows(ld), ld.stats()


def test_images_rows_become_the_float32_and_uint8_rows_bit_for_bit(shards, tok):
    f, fs = rows(shards, tok, pixel_dtype="float32")
    u, _ = rows(shards, tok, pixel_dtype="uint8")
    g, gs = rows(shards, tok, workers=2, pixel_dtype="images")  # shared-memory buffers from workers
    assert len(f) == len(u) == len(g) and fs["bad_by_reason"] == gs["bad_by_reason"] == {"decode_error": 2}
    for x, y, z in zip(f, u, g):
        assert "pixel_values" not in z and z["images"].dtype == torch.uint8
        assert z["images"].numel() == 3 * int((x["image_grid_thw"][:, 1] * x["image_grid_thw"][:, 2]).sum()) * 14 * 14
        for k in x:
            if k != "pixel_values":
                assert torch.equal(x[k], z[k]) if isinstance(x[k], torch.Tensor) else x[k] == z[k], k
        for host_numpy in (False, True):  # the torch op a device runs, and its numpy twin on the host
            pv = pixel_values_from_images(z["images"], z["image_grid_thw"], host_numpy=host_numpy)
            assert pv.dtype == torch.float32 and torch.equal(pv, x["pixel_values"])
            u8 = pixel_values_from_images(z["images"], z["image_grid_thw"], normalize=False, host_numpy=host_numpy)
            assert torch.equal(u8, y["pixel_values"])
        got, thw = _images(z)
        assert (got is None and x["pixel_values"].numel() == 0) or torch.equal(got, x["pixel_values"])


def test_the_device_op_is_the_numpy_reference_of_hf_patch_order(tok):
    rng = np.random.default_rng(0)
    sizes = [(56, 84), (112, 56), (28 * 3, 28 * 5)]
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a in imgs]))
    grid = torch.tensor([(1, h // 14, w // 14) for h, w in sizes])
    frames = []
    for a in imgs:
        from mmdata.models.patches import frame_patches

        frames.append(frame_patches(a, 14, 2))
    for dtype in ("float32", "uint8"):
        ref = fill_rows(frames, 2, dtype)
        for host_numpy in (False, True):
            got = pixel_values_from_images(flat, grid, normalize=dtype == "float32", host_numpy=host_numpy).numpy()
            assert got.dtype == ref.dtype and np.array_equal(got, ref)


def test_decode_frame_still_reads_a_stored_jpeg_as_pillow_does(shards):
    import io
    import tarfile

    from PIL import Image

    tar = tarfile.open(sorted(shards.glob("shard-*.tar"))[0])
    m = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    data = tar.extractfile(m).read()
    im = Image.open(io.BytesIO(data)).convert("RGB")
    from mmdata.models.patches import frame_patches

    assert np.array_equal(decode_frame(data, im.height, im.width), frame_patches(np.asarray(im), 14, 2))


def _random_doc(rng, vs, pad, m=2):
    """Token ids of one document with 0-3 images (vision_start + pad run) between text runs, and its grid."""
    ids, grid = [], []
    for _ in range(int(rng.integers(0, 4))):
        ids += rng.integers(0, 1000, int(rng.integers(0, 6))).tolist() + [vs]
        t, h, w = int(rng.integers(1, 3)), 2 * int(rng.integers(1, 5)), 2 * int(rng.integers(1, 5))
        grid.append((t, h, w))
        ids += [pad] * (t * h * w // (m * m))
    ids += rng.integers(0, 1000, int(rng.integers(1, 6))).tolist()
    return np.asarray(ids, np.int64), np.asarray(grid, np.int64).reshape(-1, 3)


def test_row_mrope_is_the_per_document_mrope_concatenated():
    from mmdata.models.rope import QWEN_IMAGE_PAD_ID as PAD, QWEN_VISION_START_ID as VS
    from mmdata.models.rope import mrope_position_ids, mrope_position_ids_row

    rng = np.random.default_rng(1)
    for trial in range(300):
        docs = [_random_doc(rng, VS, PAD) for _ in range(int(rng.integers(1, 6)))]
        if trial % 7 == 0:  # a document ending in vision_start next to one starting with pads; a grid no block uses
            docs[0] = (np.append(docs[0][0], VS), docs[0][1])
            docs.append((np.asarray([PAD, PAD, 5]), np.zeros((0, 3), np.int64)))
        if trial % 11 == 0:
            docs.append((np.asarray([1, 2, 3]), np.asarray([[1, 2, 2]])))
        ids = np.concatenate([d for d, _ in docs])
        want = np.concatenate([mrope_position_ids(d, g) for d, g in docs], axis=1)
        got = mrope_position_ids_row(ids, [len(d) for d, _ in docs], [g for _, g in docs])
        assert got.dtype == np.int64 and np.array_equal(got, want), trial
    bad = [(np.asarray([VS, PAD, PAD, 7]), np.asarray([[1, 2, 2]]))]  # the grid wants 1 pad, the run has 2
    with pytest.raises(ValueError, match="does not have the 1 tokens"):
        mrope_position_ids_row(bad[0][0], [4], [bad[0][1]])
