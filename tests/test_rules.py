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


def test_qwen2vl_small_image_is_enlarged_as_the_processor_does():
    # CONTRACT s.3: stored at the processor's size. 100x50 rounds to 112x56 -> 4*2 = 8 tokens.
    assert get_rule("qwen2vl").fit(100, 50, 448, 1280) == Fit(112, 56, 8)
    # 40x30: the processor lifts it to min_pixels: 84x56 -> 3*2 = 6 tokens.
    assert get_rule("qwen2vl").fit(40, 30, 448, 1280) == Fit(84, 56, 6)
    # 29x29 rounds to 28x28 = 784 < 3136 px: enlarged to 56x56, 4 tokens.
    assert get_rule("qwen2vl").fit(29, 29, 448, 1280) == Fit(56, 56, 4)


def test_qwen2vl_coco_sizes_are_the_processors():
    # The issue-10 cases: 640x427 at max-res 448 -> 448x299 -> the processor's 448x308 (16*11 tokens);
    # a 640x480 source at max-res 640 -> 644x476 (23*17), no longer passed through at 640x480.
    assert get_rule("qwen2vl").fit(640, 427, 448, 1280) == Fit(448, 308, 176)
    assert get_rule("qwen2vl").fit(640, 480, 640, 1280) == Fit(644, 476, 391)


def test_qwen2vl_thin_image_is_held_at_28_px():
    # 1000x28 at max-res 448 is capped to 448x13; the processor holds the short side at 28: 448x28, 16 tokens.
    assert get_rule("qwen2vl").fit(1000, 28, 448, 1280) == Fit(448, 28, 16)
    # At max-res 1000 the processor makes it 1008x28 -> 36*1 = 36 tokens.
    assert get_rule("qwen2vl").fit(1000, 28, 1000, 1280) == Fit(1008, 28, 36)
    # A side under 28 px in the source is no image to store.
    assert get_rule("qwen2vl").fit(1000, 27, 1000, 1280) is None


def test_qwen2vl_token_budget_binds_before_max_res():
    # 2000x2000, budget 256 tokens = 200704 px: beta = sqrt(4e6/200704) = 4.464 -> 448x448, 16*16.
    assert get_rule("qwen2vl").fit(2000, 2000, 2000, 256) == Fit(448, 448, 256)


def test_qwen2vl_over_budget_floors_both_sides():
    # 700x300, budget 64 tokens = 50176 px: beta = sqrt(210000/50176) = 2.0458; 300/beta = 146.6 -> 140,
    # 700/beta = 342.2 -> 336: 12*5 = 60 tokens.
    assert get_rule("qwen2vl").fit(700, 300, 700, 64) == Fit(336, 140, 60)


def test_qwen2vl_stored_size_is_a_fixed_point_of_the_processor():
    # 1920x1080 at 1280 tokens: beta = 1.4375 -> 1316x728 = 47*26 = 1222 tokens.
    r = get_rule("qwen2vl")
    assert r.fit(1920, 1080, 4000, 1280) == Fit(1316, 728, 1222)
    for w, h in [(1920, 1080), (300, 200), (1000, 1000), (4000, 3000), (777, 555), (5000, 60), (29, 29)]:
        for max_tokens in (64, 256, 1280):
            f = r.fit(w, h, 10_000, max_tokens)
            if f is None:  # 5000x60 at 64 tokens: the 28-px floor of the short side costs too much
                assert (w, h, max_tokens) == (5000, 60, 64)
                assert "needs --max-image-tokens >= " in r.why_not(w, h, 10_000, max_tokens)
                continue
            assert f.width % 28 == 0 and f.height % 28 == 0
            assert smart_resize(f.height, f.width, max_pixels=max_tokens * 784) == (f.height, f.width)
            assert f.tokens == (f.width // 28) * (f.height // 28) <= max_tokens


def test_qwen2vl_tokens_match_the_processor_count():
    r = get_rule("qwen2vl")
    assert r.tokens(448, 336, 1280) == 192
    # 1000x1000 under 1280 tokens: the processor shrinks to 980x980 -> 35*35 = 1225.
    assert r.tokens(1000, 1000, 1280) == 1225


def test_qwen_vl_is_256_per_image_and_rejects_small_budgets():
    r = get_rule("qwen-vl")  # stored as the processor feeds it: 448x448 (CONTRACT s.3)
    assert r.fit(640, 480, 448, 1280) == Fit(448, 448, 256)
    assert r.fit(300, 200, 448, 1280) == Fit(448, 448, 256)
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
