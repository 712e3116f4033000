"""mmdata.codec (the shard's pixel path): same pixels as Pillow's decode, Pillow's bicubic within a
level or two, EXIF orientations as Pillow applies them, and stored bytes that do not depend on the
CPU's SIMD level."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mmdata import codec
from mmdata.shard.resize import ResizeSpec, created_with, resize_image

ROOT = Path(__file__).resolve().parents[1]


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: detail at every scale, like a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 17.0), (xx + yy) * 255 // (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8), "RGB")


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_decode_is_pillows_draft_decode_pixel_for_pixel(mode, scale):
    data = jpeg(photo(203, 157).convert(mode))  # odd sizes: the scaled sides round up
    img = Image.open(io.BytesIO(data))
    img.draft(mode, (203 // scale, 157 // scale))  # Pillow picks 1/scale for this request
    ref = np.asarray(img.convert("RGB"))
    got = codec.decode_jpeg_rgb(data, (203, 157), scale)
    assert got.shape == ref.shape == (-(-157 // scale), -(-203 // scale), 3)
    assert np.array_equal(got, ref)


def test_draft_scale_is_pillows_choice():
    for size, want, scale in [((4000, 3000), (448, 336), 8), ((1280, 960), (448, 336), 2),
                              ((640, 480), (448, 336), 1), ((2000, 1125), (448, 252), 4)]:
        img = Image.open(io.BytesIO(jpeg(Image.new("RGB", size))))
        img.draft("RGB", want)
        assert codec.draft_scale(*size, *want) == scale and img.size == (-(-size[0] // scale), -(-size[1] // scale))


def test_decode_refuses_what_libjpeg_warns_about():
    data = jpeg(photo(64, 48))
    sos = data.index(b"\xff\xda")
    assert codec.decode_jpeg_rgb(data[:-40], (64, 48)) is None  # truncated
    assert codec.decode_jpeg_rgb(data[:sos] + b"\0\0" + data[sos:], (64, 48)) is None  # extraneous bytes


def test_a_jpeg_pillow_reads_despite_a_warning_is_still_stored_with_the_same_bytes():
    """libjpeg-turbo's warning sends the image to Pillow's decoder, as before: same pixels, same bytes."""
    data = jpeg(photo(640, 480))
    sos = data.index(b"\xff\xda")
    warned = data[:sos] + b"\0\0" + data[sos:]
    assert resize_image(warned, ResizeSpec()).data == resize_image(data, ResizeSpec()).data


def test_resize_is_pillows_bicubic_within_two_levels():
    a = np.asarray(photo(640, 480))
    for w, h in [(448, 336), (300, 97), (17, 640)]:
        got = codec.resize_bicubic(a, w, h)
        ref = np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BICUBIC), dtype=int)
        assert got.shape == (h, w, 3) and got.flags.c_contiguous
        assert np.abs(got.astype(int) - ref).max() <= 2


def test_resize_reads_a_read_only_array_without_changing_it():
    a = np.asarray(photo(100, 80))
    before = a.copy()
    assert not a.flags.writeable
    assert codec.resize_bicubic(a, 50, 40).shape == (40, 50, 3)
    assert np.array_equal(a, before)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_is_pillows_exif_transpose(orientation):
    img = photo(5, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    img.getexif()[0x0112] = orientation
    ref = np.asarray(ImageOps.exif_transpose(img))
    got = codec.orient(np.asarray(photo(5, 3)), orientation)
    assert np.array_equal(got, ref) and got.flags.c_contiguous


def test_encode_is_a_plain_baseline_420_jpeg():
    data = codec.encode_jpeg(np.asarray(photo(64, 48)), 90)
    img = Image.open(io.BytesIO(data))
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 48))
    assert not img.info.get("progressive") and not img.getexif()
    assert img.layer[0][1:3] == (2, 2) and img.layer[1][1:3] == (1, 1)  # 4:2:0


def test_created_with_names_the_installed_versions():
    from importlib.metadata import version

    assert created_with() == {"pillow": version("pillow"), "simplejpeg": version("simplejpeg"),
                              "torch": version("torch").split("+")[0]}


_STORE = """
import hashlib, io, sys
import numpy as np
from PIL import Image
sys.path.insert(0, {root!r})
from mmdata.shard.resize import ResizeSpec, resize_image
from tests.test_codec import jpeg, photo
h = hashlib.sha256()
for size, o in [((640, 480), 1), ((1280, 960), 1), ((2000, 1500), 6), ((500, 700), 3)]:
    exif = Image.Exif(); exif[0x0112] = o
    h.update(resize_image(jpeg(photo(*size), exif=exif), ResizeSpec()).data)
print(h.hexdigest())
"""


def test_stored_bytes_do_not_depend_on_the_cpus_simd_level():
    """Same bytes with libjpeg-turbo's SIMD and ATen's vector kernels switched off (what a CPU without
    AVX2, or another architecture, runs) as with them on."""
    code = _STORE.format(root=str(ROOT))
    run = lambda env: subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT,  # noqa: E731
                                     capture_output=True, text=True, check=True).stdout
    assert run({}) == run({"ATEN_CPU_CAPABILITY": "default", "JSIMD_FORCENONE": "1"})
