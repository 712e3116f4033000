"""``image_decode="device"``: the workers ship the stored JPEG bytes and (h, w), the trainer decodes them.

Run here through the CPU backend (the loader's own libjpeg-turbo decode), so the plumbing a GPU uses is
tested in CI: the batches equal today's ``pixel_dtype="images"`` batches bit for bit, ids, labels,
positions and grids included, also through DataLoader workers and with members the device decoders
cannot take (PNG, CMYK: decoded in the worker). A stand-in ``torchvision`` package checks the nvJPEG
code path (batched call, a refused image decoded on the CPU, one log line each) and the fallbacks
(no torchvision, the registry's CUDA build failing with ``torchvision::nms``, no accelerator).
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import loader_helpers
from loader_helpers import all_rows, make_records, same_batch, write_shards
from mmdata.loader import LoaderConfig, PackedLoader, load_tokenizer
from mmdata.loader import devdecode as dd
from mmdata.loader.adapters import _images
from mmtrain.batch import concat_rows, to_device

ROOT = Path(__file__).resolve().parents[1]
SEQ = 384
SPECIAL = {20: "png", 30: "cmyk", 50: "progressive", 60: "grey", 80: "cmyk"}  # picture seeds (sample*10 + k)
USED: list[str] = []


def _special_picture(width: int, height: int, seed: int, _plain=loader_helpers.picture) -> bytes:
    kind = SPECIAL.get(seed)
    if kind is None:
        return _plain(width, height, seed)
    USED.append(kind)
    im = Image.open(io.BytesIO(_plain(width, height, seed)))
    buf = io.BytesIO()
    if kind == "png":
        im.save(buf, format="PNG")
    elif kind == "cmyk":
        im.convert("CMYK").save(buf, format="JPEG", quality=90)
    elif kind == "progressive":
        im.save(buf, format="JPEG", quality=90, progressive=True)
    else:
        im.convert("L").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    recs = make_records(30, seed=11, max_images=3, text_only_every=7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader_helpers, "picture", _special_picture)
        return write_shards(tmp_path_factory.mktemp("devdec") / "a", recs, samples_per_shard=5,
                            corrupt={4: "image", 9: "image"})


def rows(path, tok, workers=0, **kw):
    cfg = LoaderConfig(seq_len=SEQ, window_samples=20, epochs=1, bad_sample_budget=5, pixel_dtype="images", **kw)
    ld = PackedLoader(path, tokenizer=tok, config=cfg, num_workers=workers)
    return all_rows(ld), ld.stats()


def _as_cpu_batch(row: dict, images: torch.Tensor) -> dict:
    out = {k: v for k, v in row.items() if k not in dd.SHIPPED_KEYS}
    out["images"] = images
    return out


@pytest.fixture(scope="module")
def both(shards, tok):
    return rows(shards, tok), rows(shards, tok, workers=2, image_decode="device")


def test_device_rows_decode_to_todays_cpu_rows_bit_for_bit(both, caplog):
    (cpu, cs), (dev, ds) = both
    assert len(cpu) == len(dev) > 3 and cs["bad_by_reason"] == ds["bad_by_reason"] == {"decode_error": 2}
    raw = 0
    for x, y in zip(cpu, dev):
        assert "images" not in y and set(dd.SHIPPED_KEYS) <= set(y)
        n = y["image_sizes"].shape[0]
        assert y["image_offsets"].shape == (n + 1,) and y["image_raw"].shape == (n,)
        assert torch.equal(y["image_sizes"], y["image_grid_thw"][:, 1:] * 14)
        raw += int(y["image_raw"].sum())
        images = dd.decode_shipped(y, "cpu", dd.CPU_DECODER)
        assert same_batch(x, _as_cpu_batch(y, images))  # ids, labels, positions, grids, sample ids: all equal
        assert torch.equal(to_device(y, torch.device("cpu"), dd.CPU_DECODER)["pixel_values"],
                           to_device(x, torch.device("cpu"))["pixel_values"])
        a, b = _images(x)[0], _images(y)[0]  # the outside stacks' adapters decode shipped rows too
        assert (a is None and b is None) or torch.equal(a, b)
    assert sorted(USED) == ["cmyk", "cmyk", "grey", "png", "progressive"]
    assert raw == 3  # the PNG and the two CMYK JPEGs were decoded in the worker; grey and progressive ship as JPEG


def test_shipped_entries_are_the_stored_jpegs_and_far_smaller(both):
    (cpu, _), (dev, _) = both
    import simplejpeg

    for y in dev:
        off = y["image_offsets"].tolist()
        for i, (h, w) in enumerate(y["image_sizes"].tolist()):
            blob = y["image_bytes"][off[i]:off[i + 1]].numpy()
            if y["image_raw"][i]:
                assert blob.size == h * w * 3
            else:
                assert simplejpeg.decode_jpeg_header(blob)[:2] == (h, w)
    shipped = sum(y["image_bytes"].numel() for y in dev)
    assert shipped * 4 < sum(x["images"].numel() for x in cpu)


def test_host_decoded_members_are_said_once(shards, tok, caplog):
    dd._said.clear()
    with caplog.at_level(logging.WARNING, logger="mmdata.loader"):
        rows(shards, tok, image_decode="device")
        rows(shards, tok, image_decode="device")
    lines = [r.getMessage() for r in caplog.records if "decoded on the CPU in the loader workers" in r.getMessage()]
    assert sorted(lines) == [
        "image_decode='device': a CMYK JPEG (the device decoders make RGB from YCbCr or grey only) is decoded on the "
        "CPU in the loader workers",
        "image_decode='device': an image member that is not a JPEG is decoded on the CPU in the loader workers"]


def test_micro_batches_of_shipped_rows_concatenate(both):
    (cpu, _), (dev, _) = both
    x, y = concat_rows(cpu[:3]), concat_rows(dev[:3])
    assert torch.equal(dd.decode_shipped(y, "cpu", dd.CPU_DECODER), x["images"])
    assert torch.equal(to_device(y, torch.device("cpu"), dd.CPU_DECODER)["pixel_values"],
                       to_device(x, torch.device("cpu"))["pixel_values"])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="image_decode must be 'cpu' or 'device'"):
        LoaderConfig(image_decode="gpu", pixel_dtype="images")
    with pytest.raises(ValueError, match="needs pixel_dtype='images'"):
        LoaderConfig(image_decode="device", pixel_dtype="float32")
    with pytest.raises(ValueError, match="must be one of cpu, device, auto"):
        dd.resolve_image_decode("gpu", "cpu")


# ----------------------------------------------------------------------------- decoders and fallbacks

FAKE_TV = '''
import enum, io
import simplejpeg, torch
from PIL import Image

class ImageReadMode(enum.Enum):
    UNCHANGED = 0
    GRAY = 1
    RGB = 3

CALLS = []

def decode_jpeg(input, mode=ImageReadMode.UNCHANGED, device="cpu", apply_exif_orientation=False):
    """Test double of torchvision's batched decode: [3, h, w] out; a progressive JPEG fails the whole call."""
    blobs = input if isinstance(input, list) else [input]
    CALLS.append(len(blobs))
    out = []
    for b in blobs:
        data = b.numpy().tobytes()
        if Image.open(io.BytesIO(data)).info.get("progressive"):
            raise RuntimeError("progressive JPEG refused (test double)")
        out.append(torch.from_numpy(simplejpeg.decode_jpeg(data, "RGB")).permute(2, 0, 1).contiguous())
    return out if isinstance(input, list) else out[0]
'''


def _fake_torchvision(tmp_path: Path, monkeypatch, io_source: str) -> None:
    pkg = tmp_path / "fake_tv" / "torchvision"
    (pkg / "io").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "io" / "__init__.py").write_text(textwrap.dedent(io_source))
    monkeypatch.syspath_prepend(str(tmp_path / "fake_tv"))
    for m in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, m)


def test_the_torchvision_path_batches_and_decodes_refused_images_on_the_cpu(both, tmp_path, monkeypatch, caplog):
    (cpu, _), (dev, _) = both
    _fake_torchvision(tmp_path, monkeypatch, FAKE_TV)
    dec, why = dd._torchvision_decoder("cuda")
    assert dec is not None and dec.name == "nvJPEG via torchvision", why
    import torchvision.io as tvio

    dd._said.clear()
    with caplog.at_level(logging.WARNING, logger="mmdata.loader"):
        for x, y in zip(cpu, dev):
            assert torch.equal(dd.decode_shipped(y, "cpu", dec), x["images"])
    expected = []  # one batched call per row with JPEGs; the row with the progressive one: then one call per JPEG
    for y in dev:
        off, jpegs = y["image_offsets"].tolist(), (~y["image_raw"]).nonzero().flatten().tolist()
        if jpegs:
            expected.append(len(jpegs))
        if any(Image.open(io.BytesIO(y["image_bytes"][off[i]:off[i + 1]].numpy().tobytes())).info.get("progressive")
               for i in jpegs):
            expected += [1] * len(jpegs)
    assert tvio.CALLS == expected and len(expected) > len(dev) // 2
    said = [r.getMessage() for r in caplog.records]
    assert len([s for s in said if "batched decode failed" in s]) == 1
    assert len([s for s in said if "refused an image" in s]) == 1 and "progressive" in said[-1]


def test_no_torchvision_means_cpu_decode_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _fake_torchvision(tmp_path, monkeypatch, 'raise RuntimeError("operator torchvision::nms does not exist")\n')
    for mode in ("device", "auto"):
        got, line = dd.resolve_image_decode(mode, "cuda")
        assert got == "cpu" and line == (f"image decode: cpu, not device (--image-decode {mode}): torchvision not "
                                         "importable (RuntimeError: operator torchvision::nms does not exist)")
    assert dd.resolve_image_decode("cpu", "cuda")[0] == "cpu"


def test_no_accelerator_or_a_decoder_that_fails_its_probe_means_cpu(monkeypatch, tmp_path):
    assert dd.resolve_image_decode("auto", "cpu") == (
        "cpu", "image decode: cpu, not device (--image-decode auto): no JPEG decoder on device cpu (cuda: nvJPEG, npu: DVPP)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dd.find_decoder("cuda") == (None, "no CUDA device is visible")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _fake_torchvision(tmp_path, monkeypatch, FAKE_TV)  # decodes, but onto the CPU: the probe catches it
    dec, why = dd.find_decoder("cuda")
    assert dec is None and why.startswith("nvJPEG via torchvision failed a test decode (RuntimeError: decoded onto cpu")


def test_npu_without_torch_npu_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import torch_npu -> ImportError
    dec, why = dd.find_decoder("npu")
    assert dec is None and why.startswith("torch_npu / torchvision / torchvision_npu not importable (ModuleNotFoundError: import of torch_npu halted")


# ----------------------------------------------------------------------------- mmtrain --image-decode

def test_mmtrain_image_decode_device_on_cpu_trains_with_the_cpu_decode_and_says_why(shards):
    from mmtrain.run import TrainArgs, train

    out = io.StringIO()
    args = TrainArgs(shards=[str(shards)], seq_len=SEQ, global_batch_size=1, max_steps=1, lr=1e-3, log_interval=1,
                     device="cpu", num_workers=0, bad_sample_budget=5, image_decode="device")
    res = train(args, out=out)
    assert res.iteration == 1
    assert ("image decode: cpu, not device (--image-decode device): no JPEG decoder on device cpu (cuda: nvJPEG, "
            "npu: DVPP)") in out.getvalue()


def test_mmtrain_rejects_a_bad_image_decode_in_one_line(shards):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "mmtrain.cli", "run", "--device", "cpu", "--shards", str(shards),
                        "--image-decode", "gpu"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: --image-decode must be cpu, device or auto, got 'gpu'"


# ----------------------------------------------------------------------------- on a GPU (skipped on CPU)

def _nvjpeg():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: nvJPEG is checked by scripts/device_check_decode.sh on a lent GPU")
    dec, why = dd.find_decoder("cuda")
    if dec is None:
        pytest.fail(f"CUDA is visible but the device decoder is not usable: {why}")
    return dec


def test_nvjpeg_rows_match_the_cpu_rows_within_torchvisions_tolerance(both):
    """torchvision documents no pixel tolerance for nvJPEG; its own test (test_image.py::test_decode_jpegs_cuda)
    requires mean |cuda - cpu| < 2 levels per image. Everything but the pixels must be identical."""
    dec = _nvjpeg()
    (cpu, _), (dev, _) = both
    for x, y in zip(cpu, dev):
        got = dd.decode_shipped(y, "cuda", dec)
        assert got.device.type == "cuda" and got.shape == x["images"].shape
        at = 0
        for h, w in y["image_sizes"].tolist():
            d = (got[at:at + h * w * 3].cpu().int() - x["images"][at:at + h * w * 3].int()).abs()
            assert float(d.float().mean()) < 2, (h, w, int(d.max()))
            at += h * w * 3
        pv = to_device(y, torch.device("cuda"), dec)
        ref = to_device(x, torch.device("cuda"))
        assert all(torch.equal(pv[k].cpu() if isinstance(pv[k], torch.Tensor) else torch.tensor(pv[k]),
                               ref[k].cpu() if isinstance(ref[k], torch.Tensor) else torch.tensor(ref[k]))
                   for k in ("input_ids", "labels", "position_ids", "cu_seqlens", "image_grid_thw"))


def test_mmtrain_auto_decodes_on_the_gpu(shards):
    _nvjpeg()
    from mmtrain.run import TrainArgs, train

    out = io.StringIO()
    args = TrainArgs(shards=[str(shards)], seq_len=SEQ, global_batch_size=2, max_steps=2, lr=1e-3, log_interval=1,
                     device="cuda", num_workers=2, bad_sample_budget=5, image_decode="auto")
    assert train(args, out=out).iteration == 2
    assert "image decode: device (--image-decode auto): nvJPEG via torchvision on cuda:0" in out.getvalue()
