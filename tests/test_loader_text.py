"""Text side of the loader: tokenizer loading, chat templates and label masks, M-RoPE positions."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from mmdata.errors import InputError
from mmdata.models.rope import mrope_position_ids, text_position_ids
from mmdata.text.templates import (
    IGNORE,
    TemplateError,
    encode_conversation,
    text_token_count,
    text_token_counts,
)
from mmdata.text.tokenizer import ASSET, load_tokenizer

ANCHOR = Path(__file__).resolve().parents[1].parent / "shared" / "anchor-data"

CAR = {
    "id": "000000033471",
    "image": "000000033471.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat is the color of the car?"},
        {"from": "gpt", "value": "The car is red."},
        {"from": "human", "value": "Where is it parked?"},
        {"from": "gpt", "value": "On the street, next to a tree."},
    ],
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def labelled_text(tok, enc) -> str:
    return tok.decode(enc.labels[enc.labels != IGNORE])


def runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a boolean vector."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return (np.flatnonzero(d == -1) - np.flatnonzero(d == 1)).tolist()


# ---------------------------------------------------------------------------------------------
# tokenizer


def test_shipped_tokenizer_has_qwen_special_tokens(tok):
    assert tok.vocab_size == 4096
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>", "<image>", "</s>"]
    ids = [tok.token_id(s) for s in specials]
    assert ids == list(range(4087, 4096))
    assert (tok.endoftext_id, tok.im_start_id, tok.im_end_id, tok.vision_start_id, tok.vision_end_id,
            tok.image_pad_id, tok.video_pad_id, tok.image_token_id) == tuple(ids[:8])
    assert tok.pad_id == tok.endoftext_id  # Qwen2 pads with <|endoftext|>
    assert tok.sha256 == hashlib.sha256(ASSET.read_bytes()).hexdigest()
    # special tokens written in the text are single ids; nothing is added around the text
    assert tok.encode("<|im_start|>user\n") == [tok.im_start_id] + tok.encode("user") + tok.encode("\n")
    assert tok.encode("") == []
    s = "<|vision_start|><|image_pad|><|vision_end|>\nA man riding a horse, 1984. café"
    assert tok.decode(tok.encode(s)) == s
    assert tok.encode_batch(["a dog", "<|im_end|>"]) == [tok.encode("a dog"), [tok.im_end_id]]
    assert tok.token_id("<no such token>") is None


def test_shipped_tokenizer_is_rebuilt_byte_identically():
    from fixtures.make_tokenizer import build

    assert build().to_str(pretty=False) + "\n" == ASSET.read_text(encoding="utf-8")


def test_ascii_fast_path_gives_the_normalising_tokenizers_ids(tok):
    """ASCII text skips the NFC pass (same ids); text with a decomposed accent still goes through NFC."""
    assert tok.ascii_tokenizer is not None and tok.ascii_tokenizer.normalizer is None
    full = lambda texts: [e.ids for e in tok.tokenizer.encode_batch(texts, add_special_tokens=False)]  # noqa: E731
    ascii_texts = ["<|im_start|>user\nWhat is  this?\r\n\t", " A dog's ball.<|im_end|>\n", "", "x" * 50]
    assert tok.encode_batch(ascii_texts) == full(ascii_texts)
    assert tok.encode(ascii_texts[0]) == full(ascii_texts[:1])[0]
    decomposed = ["caf" + "e\u0301 ok", "plain"]  # one non-ASCII text: the whole batch is normalised
    assert tok.encode_batch(decomposed) == full(decomposed) == full(["caf\u00e9 ok", "plain"])
    assert tok.encode(decomposed[0]) == full(["caf\u00e9 ok"])[0]


def test_tokenizer_directory_and_pad_from_config(tmp_path, tok):
    (tmp_path / "tokenizer.json").write_bytes(ASSET.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": {"content": "<|im_end|>"}}))
    t = load_tokenizer(tmp_path)
    assert t.path == str(tmp_path / "tokenizer.json")
    assert t.pad_id == t.im_end_id
    assert t.sha256 == tok.sha256
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).encode("a red car") == tok.encode("a red car")


def test_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match=r"nope\.json: tokenizer not found"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(InputError, match="no tokenizer.json in this directory"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tok.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(InputError, match=r"tok\.json: not a Hugging Face tokenizer\.json"):
        load_tokenizer(bad)
    bad.write_bytes(b"\x00\xff not json")
    with pytest.raises(InputError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(bad)


# ---------------------------------------------------------------------------------------------
# templates


def test_qwen2vl_renders_chatml_with_expanded_image(tok):
    enc = encode_conversation(CAR, tok, "qwen2vl", [4])
    assert enc.input_ids.dtype == np.int32 and enc.labels.dtype == np.int32
    assert enc.n_images == 1
    assert tok.decode(enc.input_ids) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>\n"
        "What is the color of the car?<|im_end|>\n"
        "<|im_start|>assistant\nThe car is red.<|im_end|>\n"
        "<|im_start|>user\nWhere is it parked?<|im_end|>\n"
        "<|im_start|>assistant\nOn the street, next to a tree.<|im_end|>\n"
    )
    # labels: each answer + <|im_end|> + "\n", exactly, and only those
    assert labelled_text(tok, enc) == "The car is red.<|im_end|>\nOn the street, next to a tree.<|im_end|>\n"
    ans = tok.encode("The car is red.<|im_end|>\n")
    lab = enc.labels
    assert runs(lab != IGNORE) == [len(ans), len(tok.encode("On the street, next to a tree.<|im_end|>\n"))]
    on = np.flatnonzero(lab != IGNORE)
    assert np.array_equal(lab[on], enc.input_ids[on])  # labels are the ids themselves, unshifted
    assert lab[0] == IGNORE


def test_qwen2vl_segments_tokenize_like_the_whole_text(tok):
    """Tokenizing segments and splicing pads gives the ids of tokenizing the rendered string."""
    rec = {"id": "m", "conversations": [
        {"from": "human", "value": "Compare <image> and <image>, please."},
        {"from": "gpt", "value": "The first is a cat; the second, a dog."}]}
    enc = encode_conversation(rec, tok, "qwen2vl", [3, 5])
    assert enc.input_ids.tolist() == tok.encode(tok.decode(enc.input_ids))
    is_pad = enc.input_ids == tok.image_pad_id
    assert runs(is_pad) == [3, 5]
    assert np.all(enc.input_ids[np.flatnonzero(is_pad)[[0, 3]] - 1] == tok.vision_start_id)
    assert np.all(enc.labels[is_pad] == IGNORE)


def test_qwen2vl_system_prompt_from_record(tok):
    rec = dict(CAR, system="Answer briefly.")
    enc = encode_conversation(rec, tok, "qwen2vl", [1])
    assert tok.decode(enc.input_ids).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n")
    rec2 = {"id": "s", "conversations": [{"from": "system", "value": "Be terse."}] + CAR["conversations"]}
    assert tok.decode(encode_conversation(rec2, tok, "qwen2vl", [1]).input_ids).startswith(
        "<|im_start|>system\nBe terse.<|im_end|>")


def test_llava_v1_renders_vicuna_conversation(tok):
    enc = encode_conversation(CAR, tok, "llava_v1", [3])
    assert tok.decode(enc.input_ids) == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: " + "<|image_pad|>" * 3 +
        "\nWhat is the color of the car? ASSISTANT: The car is red.</s>"
        "USER: Where is it parked? ASSISTANT: On the street, next to a tree.</s>"
    )
    assert labelled_text(tok, enc) == " The car is red.</s> On the street, next to a tree.</s>"
    assert enc.labels[enc.input_ids == tok.token_id("</s>")].tolist() == [tok.token_id("</s>")] * 2


def test_llava_single_placeholder_mode(tok):
    """image_tokens = [1]: one placeholder per image (Megatron-LM LLaVA expands it in the model)."""
    enc = encode_conversation(CAR, tok, "llava_v1", [1])
    assert int(np.count_nonzero(enc.input_ids == tok.image_placeholder_id)) == 1


def test_plain_is_image_then_caption(tok):
    rec = {"id": "p", "conversations": [{"from": "human", "value": "Describe.\n<image>"},
                                        {"from": "gpt", "value": "A red car parked on a street."}]}
    enc = encode_conversation(rec, tok, "plain", [6])
    assert tok.decode(enc.input_ids) == "<|image_pad|>" * 6 + "A red car parked on a street.\n"
    assert labelled_text(tok, enc) == "A red car parked on a street.\n"
    # text only: the first token is never labelled
    rec0 = {"id": "q", "conversations": [{"from": "human", "value": "Describe."},
                                         {"from": "gpt", "value": "A red car."}]}
    enc0 = encode_conversation(rec0, tok, "plain", [])
    assert enc0.labels[0] == IGNORE
    assert tok.decode(enc0.labels[1:]) == tok.decode(enc0.input_ids[1:])


def test_messages_shape_is_accepted(tok):
    rec = {"messages": [{"role": "user", "content": "<image>Who are they?"},
                        {"role": "assistant", "content": "Two players."}], "images": ["a.jpg"]}
    enc = encode_conversation(rec, tok, "qwen2vl", [2])
    assert labelled_text(tok, enc) == "Two players.<|im_end|>\n"


@pytest.mark.parametrize("template", ["qwen2vl", "llava_v1", "plain"])
def test_image_count_mismatch_names_the_sample(tok, template):
    rec = {"id": "bad-7", "conversations": CAR["conversations"][:2]}
    with pytest.raises(TemplateError, match=r"sample 'bad-7': image_count_mismatch: 1 <image> in the text but 2") as e:
        encode_conversation(rec, tok, template, [4, 4])
    assert e.value.reason == "image_count_mismatch" and e.value.sample_id == "bad-7"
    with pytest.raises(TemplateError, match="image_count_mismatch"):
        encode_conversation(rec, tok, template, [])


def test_literal_pad_token_in_text_is_a_token_mismatch(tok):
    rec = {"id": "lit", "conversations": [{"from": "human", "value": "<image> what is <|image_pad|>?"},
                                          {"from": "gpt", "value": "A token."}]}
    with pytest.raises(TemplateError, match=r"'lit': image_token_mismatch: 5 image pad tokens after tokenization, expected 4"):
        encode_conversation(rec, tok, "qwen2vl", [4])
    rec2 = {"id": "vs", "conversations": [{"from": "human", "value": "<image> <|vision_start|>"},
                                          {"from": "gpt", "value": "A token."}]}
    with pytest.raises(TemplateError, match="image_token_mismatch: 2 <|vision_start|>"):
        encode_conversation(rec2, tok, "qwen2vl", [4])


def test_no_label_and_bad_turns_are_errors_not_silent_samples(tok):
    with pytest.raises(TemplateError, match="no_labels"):
        encode_conversation({"id": "q", "conversations": [{"from": "human", "value": "Hi?"}]}, tok, "qwen2vl", [])
    with pytest.raises(TemplateError, match="bad_turns: the plain template needs exactly one human and one gpt"):
        encode_conversation(CAR, tok, "plain", [1])
    with pytest.raises(TemplateError, match="bad_turns: turn 1 has no known role"):
        encode_conversation({"id": "r", "conversations": [{"from": "human", "value": "a"},
                                                          {"from": "robot", "value": "b"}]}, tok, "qwen2vl", [])
    with pytest.raises(TemplateError, match="bad_turns: <image> in a gpt turn"):
        encode_conversation({"id": "g", "conversations": [{"from": "human", "value": "a"},
                                                          {"from": "gpt", "value": "<image>"}]}, tok, "qwen2vl", [1])
    with pytest.raises(TemplateError, match="bad_turns: the record is not a JSON object"):
        encode_conversation(["x"], tok, "qwen2vl", [])
    with pytest.raises(TemplateError, match="bad_turns: turn 0 has no known role"):
        encode_conversation({"id": 5, "conversations": [{"from": ["human"], "value": "a"}]}, tok, "qwen2vl", [])
    with pytest.raises(TemplateError, match="bad_turns: no 'conversations' list"):
        encode_conversation({"id": 5, "conversations": []}, tok, "qwen2vl", [])
    with pytest.raises(InputError, match="unknown chat template 'chatml'"):
        encode_conversation(CAR, tok, "chatml", [1])


def test_image_tokens_must_be_positive(tok):
    with pytest.raises(TemplateError, match="image_token_mismatch: image token counts must be >= 1"):
        encode_conversation(CAR, tok, "qwen2vl", [0])


@pytest.mark.parametrize("template", ["qwen2vl", "llava_v1"])
def test_text_token_count_plus_image_tokens_is_the_length(tok, template):
    recs = [CAR, {"id": "t", "conversations": [{"from": "human", "value": "Hello there"},
                                               {"from": "gpt", "value": "General Kenobi."}]}]
    counts = text_token_counts(recs + [{"id": "broken"}], tok, template)
    assert counts.dtype == np.int32 and counts[-1] == -1
    for rec, ks, c in zip(recs, [[37], []], counts):
        enc = encode_conversation(rec, tok, template, ks)
        assert text_token_count(rec, tok, template) == c == len(enc.input_ids) - sum(ks)


def test_qwen_tokenizer_requirements_are_checked(tok, tmp_path):
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(ASSET))
    data = json.loads(t.to_str())
    data["added_tokens"] = [a for a in data["added_tokens"] if a["content"] not in ("<|vision_start|>", "<|image_pad|>")]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    t2 = load_tokenizer(tmp_path)
    with pytest.raises(InputError, match=r"tokenizer lacks <\|vision_start\|>, <\|image_pad\|>"):
        encode_conversation(CAR, t2, "qwen2vl", [4])
    enc = encode_conversation(CAR, t2, "llava_v1", [4])  # falls back to LLaVA's <image> placeholder
    assert int(np.count_nonzero(enc.input_ids == t2.image_token_id)) == 4


def _anchor(path: str) -> Path:
    p = ANCHOR / path
    if not p.exists():
        pytest.skip(f"anchor data not found at {p}")
    return p


@pytest.mark.parametrize("template,end", [("qwen2vl", "<|im_end|>\n"), ("llava_v1", "</s>"), ("plain", "\n")])
def test_anchor_llava_qa_labels_are_exactly_the_answers(tok, template, end):
    lines = _anchor("llava/coco2014_val_gpt4_qa_30x3.jsonl").read_text(encoding="utf-8").splitlines()
    for line in lines:
        r = json.loads(line)
        rec = {"id": r["id"], "conversations": [{"from": "human", "value": "<image>\n" + r["instruction"]},
                                                {"from": "gpt", "value": r["output"]}]}
        enc = encode_conversation(rec, tok, template, [16])
        lead = " " if template == "llava_v1" else ""
        assert labelled_text(tok, enc) == lead + r["output"] + end, r["id"]
        assert int(np.count_nonzero(enc.input_ids == tok.image_pad_id)) == 16


def test_anchor_messages_demo_multi_image(tok):
    recs = json.loads(_anchor("messages/mllm_demo.json").read_text(encoding="utf-8"))
    for i, r in enumerate(recs):
        ks = [4 + j for j in range(len(r["images"]))]
        enc = encode_conversation(dict(r, id=f"demo-{i}"), tok, "qwen2vl", ks)
        assert enc.n_images == len(r["images"])
        assert runs(enc.input_ids == tok.image_pad_id) == ks
        answers = [m["content"] + "<|im_end|>\n" for m in r["messages"] if m["role"] == "assistant"]
        assert labelled_text(tok, enc) == "".join(answers)


# ---------------------------------------------------------------------------------------------
# M-RoPE


def reference_rope(ids: list[int], grid: list[list[int]], m: int, vs: int, pad: int) -> np.ndarray:
    """HF ``get_rope_index`` for one sequence, written as its documented loop (still images)."""
    n_images = sum(1 for i in range(len(ids) - 1) if ids[i] == vs and ids[i + 1] == pad)
    out: list[list[list[int]]] = []  # blocks of [t_row, h_row, w_row]
    st = 0
    for k in range(n_images):
        ed = ids.index(pad, st)
        t, h, w = grid[k][0], grid[k][1] // m, grid[k][2] // m
        text_len = ed - st
        st_idx = max(max(row) for row in out[-1]) + 1 if out else 0
        out.append([[st_idx + i for i in range(text_len)] for _ in range(3)])
        tt, hh, ww = [], [], []
        for a in range(t):
            for b in range(h):
                for c in range(w):
                    tt.append(a + text_len + st_idx)
                    hh.append(b + text_len + st_idx)
                    ww.append(c + text_len + st_idx)
        out.append([tt, hh, ww])
        st = ed + t * h * w
    if st < len(ids):
        st_idx = max(max(row) for row in out[-1]) + 1 if out else 0
        out.append([[st_idx + i for i in range(len(ids) - st)] for _ in range(3)])
    return np.array([sum((blk[r] for blk in out), []) for r in range(3)], dtype=np.int64)


def test_mrope_tiny_doc_by_hand():
    # 2 text tokens, <|vision_start|>, one 4x4-patch image (merged 2x2 = 4 pads), <|vision_end|>, 1 text token
    VS, PAD, VE = 90, 92, 91
    ids = np.array([5, 6, VS, PAD, PAD, PAD, PAD, VE, 7])
    pos = mrope_position_ids(ids, np.array([[1, 4, 4]]), 2, vision_start_id=VS, image_pad_id=PAD)
    assert pos.dtype == np.int64 and pos.shape == (3, 9)
    assert pos.tolist() == [
        [0, 1, 2, 3, 3, 3, 3, 5, 6],
        [0, 1, 2, 3, 3, 4, 4, 5, 6],
        [0, 1, 2, 3, 4, 3, 4, 5, 6],
    ]


def test_mrope_without_images_is_text_positions():
    ids = np.arange(7)
    assert np.array_equal(mrope_position_ids(ids, np.zeros((0, 3))), np.tile(np.arange(7), (3, 1)))
    assert text_position_ids(4).tolist() == [0, 1, 2, 3] and text_position_ids(4).dtype == np.int64
    assert mrope_position_ids(np.zeros(0, np.int64), np.zeros((0, 3))).shape == (3, 0)


def test_mrope_matches_reference_on_random_multi_image_docs():
    VS, PAD, VE = 1000, 1001, 1002
    rng = random.Random(0)
    for _ in range(200):
        ids: list[int] = []
        grid: list[list[int]] = []
        for _ in range(rng.randint(0, 4)):
            ids += [rng.randint(0, 999) for _ in range(rng.randint(0, 6))]
            t, h, w = rng.choice([1, 1, 1, 2]), 2 * rng.randint(1, 7), 2 * rng.randint(1, 7)
            grid.append([t, h, w])
            ids += [VS] + [PAD] * (t * h * w // 4) + [VE]
        ids += [rng.randint(0, 999) for _ in range(rng.randint(0, 6))]
        got = mrope_position_ids(np.array(ids, dtype=np.int32), np.array(grid).reshape(-1, 3), 2, VS, PAD)
        assert np.array_equal(got, reference_rope(ids, grid, 2, VS, PAD)), (ids, grid)


def test_mrope_on_an_encoded_conversation(tok):
    enc = encode_conversation(CAR, tok, "qwen2vl", [6])  # grid 1 x 4 x 6 -> 2 x 3 merged
    pos = mrope_position_ids(enc.input_ids, np.array([[1, 4, 6]]), 2, tok.vision_start_id, tok.image_pad_id)
    ref = reference_rope(enc.input_ids.tolist(), [[1, 4, 6]], 2, tok.vision_start_id, tok.image_pad_id)
    assert np.array_equal(pos, ref)
    s = int(np.flatnonzero(enc.input_ids == tok.image_pad_id)[0])
    assert pos[:, s:s + 6].tolist() == [[s] * 6, [s, s, s, s + 1, s + 1, s + 1], [s, s + 1, s + 2] * 2]
    assert pos[0, s + 6] == s + 3  # <|vision_end|> continues at max + 1


def test_mrope_rejects_grid_disagreement():
    VS, PAD = 9, 5
    ids = np.array([1, VS, PAD, PAD, PAD, PAD, 8])
    with pytest.raises(ValueError, match=r"1 image\(s\) in the tokens .* but 2 row\(s\)"):
        mrope_position_ids(ids, np.array([[1, 4, 4], [1, 2, 2]]), 2, VS, PAD)
    with pytest.raises(ValueError, match="does not have the 6 tokens"):
        mrope_position_ids(ids, np.array([[1, 4, 6]]), 2, VS, PAD)
    with pytest.raises(ValueError, match="does not have the 1 tokens"):
        mrope_position_ids(ids, np.array([[1, 2, 2]]), 2, VS, PAD)
    with pytest.raises(ValueError, match="divisible by 2"):
        mrope_position_ids(ids, np.array([[1, 3, 4]]), 2, VS, PAD)


def test_tokenizer_pickles_for_dataloader_workers(tok):
    import pickle

    t2 = pickle.loads(pickle.dumps(tok))
    assert t2.sha256 == tok.sha256 and t2.image_pad_id == tok.image_pad_id
    assert encode_conversation(CAR, t2, "qwen2vl", [3]).input_ids.tolist() == \
        encode_conversation(CAR, tok, "qwen2vl", [3]).input_ids.tolist()
