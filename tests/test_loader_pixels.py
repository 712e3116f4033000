"""Pixels: Hugging Face Qwen2VLImageProcessor patch order, CLIP normalisation, exact sizes and token counts."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mmdata.loader.pixels import CLIP_MEAN, CLIP_STD, image_rows, normalize_numpy, normalize_pixels, patchify, target_size


def hf_reference(img_hwc: np.ndarray, p=14, m=2, t=2) -> np.ndarray:
    """HF `_preprocess` as documented: CHW, normalise, tile to t frames, reshape/transpose, flatten."""
    chw = img_hwc.astype(np.float64).transpose(2, 0, 1) / 255.0
    chw = (chw - np.asarray(CLIP_MEAN)[:, None, None]) / np.asarray(CLIP_STD)[:, None, None]
    frames = np.tile(chw[None], (t, 1, 1, 1))  # [T, C, H, W]
    c, h, w = chw.shape
    gt, gh, gw = 1, h // p, w // p
    x = frames.reshape(gt, t, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * t * p * p)


@pytest.mark.parametrize("h,w", [(28, 28), (56, 84), (112, 56)])
def test_patch_order_matches_hf(h, w):
    img = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ours = normalize_numpy(patchify(img))
    ref = hf_reference(img)
    assert ours.shape == ref.shape == ((h // 14) * (w // 14), 1176)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)


def test_uint8_rows_and_device_normalisation_agree():
    img = np.random.default_rng(3).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    raw = patchify(img)
    assert raw.dtype == np.uint8
    # channel of column c is c // 392 (C, T, 14, 14 channel-major)
    assert np.array_equal(raw[0, :196], img[:14, :14, 0].reshape(-1))
    assert np.array_equal(raw[0, 392:392 + 196], img[:14, :14, 1].reshape(-1))
    dev = normalize_pixels(torch.from_numpy(raw)).numpy()
    np.testing.assert_allclose(dev, normalize_numpy(raw), rtol=0, atol=1e-6)


def test_image_rows_size_grid_and_tokens():
    assert target_size(100, 150, max_pixels=1280 * 28 * 28) == (112, 140)
    h, w = 112, 140  # stored at the processor's size (CONTRACT s.3): the loader never resizes
    arr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    with pytest.raises(ValueError, match="the json says 150x100"):
        image_rows(buf.getvalue(), 100, 150, 14, 2, 2, "float32")
    rows, grid = image_rows(buf.getvalue(), h, w, 14, 2, 2, "float32")
    assert grid == (1, 8, 10)
    assert rows.shape == (80, 1176) and rows.dtype == np.float32
    assert rows.shape[0] // 4 == (h // 28) * (w // 28)  # image tokens after the 2x2 merge
    # the stored pixels, in HF order
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    np.testing.assert_allclose(rows, hf_reference(ref), atol=2e-6)


def test_patchify_rejects_unaligned():
    with pytest.raises(ValueError, match="multiple of 28"):
        patchify(np.zeros((30, 28, 3), np.uint8))


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_fill_rows_equals_per_image_rows(dtype):
    from mmdata.loader.pixels import decode_frame, fill_rows

    blobs = []
    for k, (h, w) in enumerate([(56, 84), (28, 56)]):
        arr = np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        blobs.append((buf.getvalue(), h, w))
    frames = [decode_frame(b, h, w) for b, h, w in blobs]
    got = fill_rows(frames, 2, dtype)
    want = np.concatenate([image_rows(b, h, w, 14, 2, 2, dtype)[0] for b, h, w in blobs])
    assert got.dtype == want.dtype and np.array_equal(got, want)
