"""The resizer: stored sizes equal the rule's fit, EXIF applied, modes converted to RGB, passthrough
keeps bytes, bad images get the right reject reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmdata.images import ImageError
from mmdata.models.rules import get_rule
from mmdata.shard.resize import ResizeSpec, resize_image

ANCHOR = Path(__file__).resolve().parents[1] / ".." / "shared" / "anchor-data"


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def textured(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 255 // (w + h)], -1)
    noise = rng.integers(-10, 11, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def with_top_bar(w: int, h: int) -> Image.Image:
    """A displayed (upright) picture: a red bar over the top eighth, grey elsewhere."""
    a = np.full((h, w, 3), 128, np.uint8)
    a[: h // 8] = (230, 20, 20)
    return Image.fromarray(a, "RGB")


def exif_jpeg(displayed: Image.Image, orientation: int) -> bytes:
    """Bytes whose raw pixels, once EXIF ``orientation`` is applied, show ``displayed``."""
    raw = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(displayed.transpose(raw), quality=95, exif=exif)


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


SPEC = ResizeSpec()


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (2000, 1500), (1600, 400), (3000, 2000), (500, 450)])
@pytest.mark.parametrize("rule", ["qwen2vl", "qwen-vl", "internvl"])
def test_stored_size_is_exactly_the_rules_fit(size, rule):
    spec = ResizeSpec(rule=rule)
    fit = get_rule(rule).fit(*size, spec.max_res, spec.max_image_tokens)
    s = resize_image(encode(textured(*size), quality=90), spec)
    assert (s.width, s.height, s.image_tokens) == (fit.width, fit.height, fit.tokens)
    assert decode(s.data).size == (fit.width, fit.height)
    assert (s.orig_width, s.orig_height) == size
    assert max(s.width, s.height) <= spec.max_res  # 448 is a multiple of 28: rounding keeps it


def test_coco_photo_is_448x336_with_192_tokens():
    s = resize_image(encode(textured(640, 480)), SPEC)
    assert (s.width, s.height, s.image_tokens, s.passthrough) == (448, 336, 192, False)
    assert decode(s.data).mode == "RGB"


def test_jpeg_already_at_the_processors_size_is_stored_byte_identical():
    data = encode(textured(308, 196), quality=80)
    s = resize_image(data, SPEC)
    assert s.passthrough and s.data == data
    assert (s.width, s.height, s.image_tokens) == (308, 196, 77)  # 11 x 7 merged patches


def test_jpeg_off_the_28_grid_is_resized_to_the_processors_size():
    # CONTRACT s.3: 300x200 is not what the processor feeds the model (it would make it 308x196).
    s = resize_image(encode(textured(300, 200), quality=80), SPEC)
    assert not s.passthrough and (s.width, s.height, s.image_tokens) == (308, 196, 77)
    assert decode(s.data).size == (308, 196)


def test_small_grey_jpeg_is_stored_byte_identical():
    data = encode(textured(308, 196).convert("L"))
    s = resize_image(data, SPEC)
    assert s.passthrough and s.data == data


def test_orientation_1_tag_still_passes_through():
    exif = Image.Exif()
    exif[0x0112] = 1
    data = encode(textured(308, 196), exif=exif)
    assert resize_image(data, SPEC).data == data


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_is_applied_and_stored_upright(orientation):
    data = exif_jpeg(with_top_bar(400, 600), orientation)
    assert Image.open(io.BytesIO(data)).size == (600, 400)  # raw pixels are landscape
    s = resize_image(data, SPEC)
    # Displayed 400x600 -> scale 448/600 -> 299x448 -> the processor's 308x448; orig size is after orientation.
    assert (s.width, s.height, s.orig_width, s.orig_height, s.passthrough) == (308, 448, 400, 600, False)
    img = decode(s.data)
    assert img.size == (308, 448)
    a = np.asarray(img, dtype=int)
    assert a[2, 150].tolist() == pytest.approx([230, 20, 20], abs=12)  # red bar on top
    assert a[-3, 150].tolist() == pytest.approx([128, 128, 128], abs=12)
    assert 0x0112 not in img.getexif()  # no tag left to rotate it twice


def test_small_rotated_jpeg_is_reencoded_not_passed_through():
    data = exif_jpeg(with_top_bar(196, 308), 6)  # displayed at the processor's size, but rotated
    s = resize_image(data, SPEC)
    assert not s.passthrough and (s.width, s.height) == (196, 308)
    assert np.asarray(decode(s.data))[2, 100].tolist() == pytest.approx([230, 20, 20], abs=12)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (300, 200), (0, 255, 255, 0))  # pure red in CMYK
    s = resize_image(encode(cmyk, quality=95), SPEC)
    img = decode(s.data)
    assert not s.passthrough and img.mode == "RGB" and img.size == (308, 196)
    r, g, b = np.asarray(img, dtype=int)[100, 150]
    assert r > 200 and g < 60 and b < 60


def test_rgba_png_is_composited_over_white():
    a = np.zeros((100, 120, 4), np.uint8)
    a[:, :60] = (0, 0, 255, 255)  # opaque blue left half, transparent right half
    s = resize_image(encode(Image.fromarray(a, "RGBA"), "PNG"), SPEC)
    px = np.asarray(decode(s.data), dtype=int)
    assert px[50, 20].tolist() == pytest.approx([0, 0, 255], abs=12)
    assert px[50, 100].tolist() == pytest.approx([255, 255, 255], abs=12)


def test_palette_with_transparency_and_16_bit_grey_become_rgb():
    p = Image.new("P", (64, 64), 0)
    p.putpalette([255, 0, 0] + [0, 255, 0] * 255)
    p.info["transparency"] = 0
    s = resize_image(encode(p, "PNG", transparency=0), SPEC)
    assert decode(s.data).mode == "RGB"
    assert np.asarray(decode(s.data), dtype=int)[30, 30].tolist() == pytest.approx([255, 255, 255], abs=12)
    g16 = Image.fromarray(np.full((64, 64), 65535, np.uint16))
    s = resize_image(encode(g16, "PNG"), SPEC)
    assert np.asarray(decode(s.data), dtype=int)[30, 30].tolist() == pytest.approx([255, 255, 255], abs=3)


def test_small_image_is_enlarged_as_the_processor_does():
    # 60x40 rounds to 56x28 = 1568 px < min_pixels 3136: the processor enlarges it to 84x56.
    s = resize_image(encode(textured(60, 40), "PNG"), SPEC)
    assert (s.width, s.height, s.image_tokens) == (84, 56, 6)


def test_jpeg_is_deterministic():
    data = encode(textured(1200, 900))
    assert resize_image(data, SPEC).data == resize_image(data, SPEC).data


def test_draft_decode_is_close_to_an_exact_lanczos_resize():
    img = textured(2400, 1800, seed=3)
    data = encode(img, quality=95)
    s = resize_image(data, ResizeSpec(quality=100))
    exact = decode(data).convert("RGB").resize((s.width, s.height), Image.Resampling.LANCZOS)
    mse = ((np.asarray(decode(s.data), float) - np.asarray(exact, float)) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 40


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "unreadable_image"),
        (b"not an image at all", "unreadable_image"),
        (encode(textured(300, 200))[:600], "unreadable_image"),  # truncated JPEG
        (encode(textured(20, 300)), "image_too_small"),
        (encode(textured(1, 2000), "PNG"), "image_too_small"),
        (encode(textured(9000, 40)), "over_token_budget"),  # aspect 225: the processor refuses it
    ],
)
def test_bad_images_get_a_reason(data, reason):
    with pytest.raises(ImageError) as e:
        resize_image(data, SPEC)
    assert e.value.reason == reason


def test_fixed_cost_rule_over_budget():
    with pytest.raises(ImageError) as e:
        resize_image(encode(textured(300, 200)), ResizeSpec(rule="qwen-vl", max_image_tokens=100))
    assert e.value.reason == "over_token_budget"


def test_anchor_images():
    root = ANCHOR.resolve()
    if not root.exists():
        pytest.skip("anchor data (../shared/anchor-data) not present")
    demo = (root / "messages" / "mllm_demo_data" / "2.jpg").read_bytes()  # 300x199, Orientation = 1
    s = resize_image(demo, SPEC)
    assert (s.width, s.height, s.passthrough) == (308, 196, False)  # 300x199 is off the 28 grid
    grey = (root / "coco" / "images" / "000000431848.jpg").read_bytes()  # L, 378x640
    s = resize_image(grey, SPEC)
    assert (s.width, s.height, s.passthrough) == (252, 448, False)  # 265x448 -> the processor's 252x448
    assert decode(s.data).mode == "RGB"


@pytest.mark.parametrize("w,h,spec,detail", [
    (9000, 40, SPEC, "9000x40: aspect 225 > 200, which Qwen2-VL's processor refuses"),
    (5600, 28, ResizeSpec(max_res=10000, max_image_tokens=64),
     "5600x28: at max-res 10000 Qwen2-VL's processor holds a side at 28 px and the image costs more than "
     "--max-image-tokens 64; needs --max-image-tokens >= 198"),
])
def test_over_token_budget_names_the_binding_limit_and_the_fix(w, h, spec, detail):
    with pytest.raises(ImageError) as e:
        resize_image(encode(textured(w, h)), spec)
    assert (e.value.reason, e.value.detail) == ("over_token_budget", detail)


def test_a_thin_image_is_held_at_28_px_as_the_processor_does():
    # 2000x40 at max-res 448 is 448x9 after the cap; the processor stores it at 448x28 (16 tokens).
    s = resize_image(encode(textured(2000, 40)), SPEC)
    assert (s.width, s.height, s.image_tokens) == (448, 28, 16)


def test_the_suggested_budget_is_the_least_that_works():
    rule = get_rule("qwen2vl")
    assert rule.fit(5600, 28, 10000, 198) is not None and rule.fit(5600, 28, 10000, 197) is None


def test_fixed_cost_rule_over_budget_says_what_it_costs():
    with pytest.raises(ImageError) as e:
        resize_image(encode(textured(300, 200)), ResizeSpec(rule="qwen-vl", max_image_tokens=100))
    assert e.value.detail == "300x200: qwen-vl spends 256 tokens on every image > --max-image-tokens 100"
