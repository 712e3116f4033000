"""Token arithmetic of each rule against hand-computed cases (the numbers below are worked out by hand)."""

from __future__ import annotations

import pytest

from mmdata.models.rules import Fit, get_rule, smart_resize


def test_smart_resize_rounds_each_side_to_28():
    # 480/28 = 17.14 -> 17*28 = 476; 640/28 = 22.86 -> 23*28 = 644; 476*644 = 306544 < 1280*784.
    assert smart_resize(480, 640) == (476, 644)


def test_smart_resize_floors_both_sides_when_over_budget():
    # 1000x1000 rounds to 1008x1008 = 1016064 > 1003520 = 1280*784: beta = sqrt(1e6/1003520),
    # 1000/beta = 1001.75 -> floor to 35*28 = 980.
    assert smart_resize(1000, 1000, max_pixels=1280 * 784) == (980, 980)


def test_smart_resize_ceils_both_sides_when_under_min_pixels():
    # 30x40 rounds to 28x28 = 784 < 3136: beta = sqrt(3136/1200) = 1.6166;
    # 30*beta = 48.5 -> ceil to 56; 40*beta = 64.7 -> ceil to 84.
    assert smart_resize(30, 40) == (56, 84)


def test_qwen2vl_coco_photo_at_448():
    # scale = 448/640 = 0.7 -> 448x336; 448/28 * 336/28 = 16*12 = 192 tokens.
    assert get_rule("qwen2vl").fit(640, 480, 448, 1280) == Fit(448, 336, 192)


def test_qwen2vl_portrait_keeps_orientation():
    assert get_rule("qwen2vl").fit(480, 640, 448, 1280) == Fit(336, 448, 192)


def test_qwen2vl_small_image_is_never_upscaled():
    # 100x50 stays; the processor rounds to 112x56 -> 4*2 = 8 tokens.
    assert get_rule("qwen2vl").fit(100, 50, 448, 1280) == Fit(100, 50, 8)
    # 40x30: the processor lifts it to min_pixels: 84x56 -> 3*2 = 6 tokens; stored as is.
    assert get_rule("qwen2vl").fit(40, 30, 448, 1280) == Fit(40, 30, 6)


def test_qwen2vl_thin_image_beats_the_pixel_cap():
    # 1000x28 at max-res 448 would be 448x13: a side below 28, no valid size.
    assert get_rule("qwen2vl").fit(1000, 28, 448, 1280) is None
    # At max-res 1000 it is kept: the processor makes it 1008x28 -> 36*1 = 36 tokens.
    assert get_rule("qwen2vl").fit(1000, 28, 1000, 1280) == Fit(1000, 28, 36)


def test_qwen2vl_token_budget_binds_before_max_res():
    # 2000x2000, budget 256 tokens = 200704 px: scale = sqrt(200704/4e6) = 0.224 -> 448x448, 16*16.
    assert get_rule("qwen2vl").fit(2000, 2000, 2000, 256) == Fit(448, 448, 256)


def test_qwen2vl_rounding_shrinks_once_more():
    # 700x300, budget 64 tokens = 50176 px: scale 0.48881 gives 342x147 = 50274 px > 50176, so the
    # rule shrinks 0.5%: 0.486366 -> 340x146 = 49640 px; the processor uses 336x140 -> 12*5 = 60 tokens.
    assert get_rule("qwen2vl").fit(700, 300, 700, 64) == Fit(340, 146, 60)


def test_qwen2vl_processor_never_shrinks_a_stored_image_again():
    # 1920x1080 at 1280 tokens: 1336x751 fits max_pixels (1003520) but its sides round to 1344x756 =
    # 1016064 px > max_pixels, so the processor would shrink it again (to 1316x728). The rule stores
    # a size whose rounded sides fit: 1329x748 -> 1316x756 = 47*27 = 1269 tokens, nothing shrunk.
    r = get_rule("qwen2vl")
    assert r.fit(1920, 1080, 4000, 1280) == Fit(1329, 748, 1269)
    for w, h in [(1920, 1080), (300, 200), (1000, 1000), (4000, 3000), (777, 555), (5000, 60)]:
        for max_tokens in (64, 256, 1280):
            f = r.fit(w, h, 10_000, max_tokens)
            if f is None:  # 5000x60 at 64 tokens would need a side under 28: over_token_budget
                assert (w, h, max_tokens) == (5000, 60, 64)
                continue
            rounded = max(28, round(f.height / 28) * 28) * max(28, round(f.width / 28) * 28)
            assert rounded <= max_tokens * 784, (w, h, max_tokens, f)


def test_qwen2vl_tokens_match_the_processor_count():
    r = get_rule("qwen2vl")
    assert r.tokens(448, 336, 1280) == 192
    # 1000x1000 under 1280 tokens: the processor shrinks to 980x980 -> 35*35 = 1225.
    assert r.tokens(1000, 1000, 1280) == 1225


def test_qwen_vl_is_256_per_image_and_rejects_small_budgets():
    r = get_rule("qwen-vl")
    assert r.fit(640, 480, 448, 1280) == Fit(448, 336, 256)
    assert r.fit(300, 200, 448, 1280) == Fit(300, 200, 256)
    assert r.fit(640, 480, 448, 255) is None


def test_llava_is_576_per_image():
    assert get_rule("llava").fit(640, 480, 448, 1280) == Fit(448, 336, 576)
    assert get_rule("llava").fit(640, 480, 448, 575) is None


def test_internvl_tiles_plus_thumbnail():
    r = get_rule("internvl")
    # 1280 tokens -> 5 tiles of 256 -> max_num 4 (+ thumbnail). 448x336 (aspect 1.33): 1x1 and 2x2
    # tie at |1.33-1|, and the area 150528 is not > 0.5*448*448*4, so one tile: 256 tokens.
    assert r.fit(640, 480, 448, 1280) == Fit(448, 336, 256)
    # 1344x448, aspect 3 -> 3x1 tiles + thumbnail = 4*256 = 1024 tokens.
    assert r.fit(1344, 448, 1344, 1280) == Fit(1344, 448, 1024)
    assert r.fit(640, 480, 448, 255) is None


def test_unknown_rule_lists_the_known_ones():
    with pytest.raises(ValueError, match="qwen2vl"):
        get_rule("gpt4v")


def test_qwen2vl_refuses_what_the_processor_refuses():
    # qwen_vl_utils / transformers smart_resize raise ValueError when long/short > 200 (MAX_RATIO),
    # so a 5628x28 image (aspect 201) must not be stored, even at a max-res that lets it through.
    assert get_rule("qwen2vl").fit(5628, 28, 6000, 1280) is None
