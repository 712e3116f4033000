"""The conversation record: normalisation (rules 1-4 and their precedence), exact output records,
the messages shapes, and validation of records that claim to be clean."""

from __future__ import annotations

import pytest

from mmdata.records import normalize, to_messages, unsafe_path_reason, validate_record


def conv(*values: str, roles: tuple[str, str] = ("human", "gpt")) -> list[dict[str, str]]:
    return [{"from": roles[i % 2], "value": v} for i, v in enumerate(values)]


def code(raw, shape: str = "auto") -> str | None:
    return normalize(raw, "f-0", shape).code


def test_exact_output_record() -> None:
    raw = {"meta": 1, "image": "a.jpg", "id": 777,
           "conversations": [{"from": "system", "value": " Be brief. "}] + conv("  <image>\nWhat?\n ", " A cat.\nSitting. ",
                                                                               roles=("user", "assistant")),
           "source": "x"}
    res = normalize(raw, "f-3")
    assert res.code is None and res.id == "777" and res.images == ["a.jpg"]
    assert res.record == {"id": "777", "image": "a.jpg", "system": "Be brief.",
                          "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                            {"from": "gpt", "value": "A cat.\nSitting."}],
                          "meta": 1, "source": "x"}
    assert list(res.record) == ["id", "image", "system", "conversations", "meta", "source"]
    assert (res.roles, res.values) == (["system", "human", "gpt"], ["Be brief.", "<image>\nWhat?", "A cat.\nSitting."])


def test_ids_and_images_shapes() -> None:
    r = normalize({"conversations": conv("Hi", "Hello.")}, "data-7")
    assert r.id == "data-7" and r.record == {"id": "data-7", "conversations": conv("Hi", "Hello.")}
    r = normalize({"id": "x", "image": [], "conversations": conv("Hi", "Hello.")}, "d-0")
    assert "image" not in r.record
    r = normalize({"id": "x", "image": ["a.jpg"], "conversations": conv("<image>Hi", "Hello.")}, "d-0")
    assert r.record["image"] == "a.jpg"
    r = normalize({"id": "x", "image": ["a.jpg", "b.jpg"], "conversations": conv("<image><image>Hi", "Hello.")}, "d-0")
    assert r.record["image"] == ["a.jpg", "b.jpg"]
    assert normalize({"conversations": conv("<image>", "A dog.")} | {"image": "a.jpg"}, "d").code is None


@pytest.mark.parametrize("raw", [
    "text", [1], None, 3,
    {"id": "a"},
    {"conversations": []},
    {"conversations": {"from": "human"}},
    {"conversations": ["hi", "there"]},
    {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
    {"conversations": [{"value": "Hi"}, {"from": "gpt", "value": "x"}]},
    {"id": True, "conversations": conv("Hi", "Hello.")},
    {"id": 1.5, "conversations": conv("Hi", "Hello.")},
    {"id": None, "conversations": conv("Hi", "Hello.")},
    {"image": 5, "conversations": conv("<image>Hi", "Hello.")},
    {"image": ["a.jpg", None], "conversations": conv("<image><image>Hi", "Hello.")},
    {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "Five."}]},
    {"messages": [{"role": "user", "content": [{"type": "video", "value": "v.mp4"}]}, {"role": "assistant", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "text"}]}, {"role": "assistant", "content": "x"}]},
])
def test_malformed(raw) -> None:
    res = normalize(raw, "f-0")
    assert res.code == "malformed" and res.detail and res.record is None


@pytest.mark.parametrize("turns", [
    conv("Hi", "Hello.", "More?"),  # trailing human
    [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}, {"from": "gpt", "value": "z"}],
    [{"from": "human", "value": "x"}, {"from": "human", "value": "y"}, {"from": "gpt", "value": "z"}],
    [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}],
    [{"from": "human", "value": "x"}, {"from": "system", "value": "s"}, {"from": "gpt", "value": "y"}],
    [{"from": "system", "value": "s"}],
    [{"from": "Human", "value": "x"}, {"from": "gpt", "value": "y"}],
])
def test_bad_roles(turns) -> None:
    assert code({"conversations": turns}) == "bad_roles"


def test_empty_turn_and_bare_image_token() -> None:
    assert code({"conversations": conv("Hi", "  \n ")}) == "empty_turn"
    assert code({"conversations": [{"from": "system", "value": " "}] + conv("Hi", "Yo.")}) == "empty_turn"
    assert code({"image": "a.jpg", "conversations": conv(" <image> ", "A cat.")}) is None


def test_image_token_mismatch() -> None:
    assert code({"image": "a.jpg", "conversations": conv("What?", "A cat.")}) == "image_token_mismatch"
    assert code({"conversations": conv("<image>What?", "A cat.")}) == "image_token_mismatch"
    assert code({"image": "a.jpg", "conversations": conv("<image>What?", "A <image> cat.")}) == "image_token_mismatch"
    assert code({"image": ["a.jpg", "b.jpg"], "conversations": conv("<image>What?", "A cat.", "And <image>?", "Dog.")}) is None
    res = normalize({"image": "a.jpg", "conversations": conv("<image><image>What?", "A cat.")}, "f")
    assert res.detail == "2 <image> token(s) in human turns, 1 image(s)"


def test_precedence() -> None:
    # malformed > bad_roles > empty_turn > image_token_mismatch
    assert code({"id": 2.0, "conversations": conv("Hi")}) == "malformed"
    assert code({"conversations": conv("", "x", "trailing")}) == "bad_roles"
    assert code({"image": "a.jpg", "conversations": conv("No token", " ")}) == "empty_turn"


def test_messages_shape() -> None:
    raw = {"messages": [{"role": "system", "content": "Sys."},
                        {"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": " Them. "}],
           "images": ["1.jpg"], "tag": "t"}
    res = normalize(raw, "demo-0")
    assert res.record == {"id": "demo-0", "image": "1.jpg", "system": "Sys.",
                          "conversations": [{"from": "human", "value": "<image>Who?"}, {"from": "gpt", "value": "Them."}],
                          "tag": "t"}
    assert to_messages(res.record) == {"id": "demo-0", "messages": raw["messages"][:2] + [{"role": "assistant", "content": "Them."}],
                                       "images": ["1.jpg"], "tag": "t"}


def test_content_list_flattening() -> None:
    raw = {"messages": [
        {"role": "user", "content": [{"type": "text", "value": "Compare"}, {"type": "image_url", "value": "a.jpg"},
                                     {"type": "text", "text": "and"}, {"type": "image", "image": "b.jpg"},
                                     {"type": "image_url", "image_url": {"url": "c.jpg"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Same."}, {"type": "text", "text": "Really."}]}]}
    res = normalize(raw, "x-0")
    assert res.images == ["a.jpg", "b.jpg", "c.jpg"]
    assert res.record["conversations"] == [{"from": "human", "value": "Compare<image>and<image><image>"},
                                           {"from": "gpt", "value": "Same.\nReally."}]


def test_forced_shapes() -> None:
    m = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}]}
    assert code(m, "llava") == "malformed"
    assert code(m, "messages") is None
    assert code({"conversations": conv("Hi", "Yo.")}, "messages") == "malformed"


def test_instruction_output_shape() -> None:
    raw = {"id": "000000525439", "image": "COCO_val2014_000000525439.jpg", "instruction": "What is it?",
           "output": "A skateboard.", "type": "conv"}
    res = normalize(raw, "f-0")
    assert res.record == {"id": "000000525439", "image": "COCO_val2014_000000525439.jpg",
                          "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                            {"from": "gpt", "value": "A skateboard."}],
                          "type": "conv"}
    assert normalize({"instruction": "Add 1+1.", "input": "now", "output": "2"}, "a-0").record["conversations"][0] == \
        {"from": "human", "value": "Add 1+1.\nnow"}


def test_unsafe_path_reason() -> None:
    for bad in ("", "/abs/a.jpg", "../a.jpg", "a/../b.jpg", "a\\..\\b.jpg", "C:\\x.jpg", "a\x00.jpg"):
        assert unsafe_path_reason(bad), bad
    for ok in ("a.jpg", "sub/a.jpg", "v1..final.jpg", "..a.jpg", "a..", "./a.jpg"):
        assert unsafe_path_reason(ok) is None, ok


def test_validate_record() -> None:
    good = {"id": "1", "image": "a.jpg", "conversations": conv("<image>\nWhat?", "A cat.")}
    assert validate_record(good) == []
    assert validate_record(good | {"id": 1})[0][0] == "malformed"
    assert validate_record(good | {"conversations": conv("<image>\nWhat?", "A cat.", roles=("user", "assistant"))})[0][0] == "bad_roles"
    assert validate_record(good | {"conversations": conv("<image>\nWhat? ", "A cat.")})[0][0] == "malformed"
    assert validate_record(good | {"image": "../a.jpg"})[0][0] == "unsafe_path"
    assert validate_record(good | {"image": ["a.jpg", "b.jpg"]})[0][0] == "image_token_mismatch"
    assert validate_record({"id": "1", "messages": []})[0][0] == "malformed"


@pytest.mark.parametrize("rid", ["", " ", "\t\n "])
def test_empty_or_blank_id_counts_as_missing(rid: str) -> None:
    turns = [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]
    for raw in ({"id": rid, "conversations": turns},  # the fast path
                {"id": rid, "conversations": [{"from": "user", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
                {"id": rid, "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}):
        res = normalize(raw, "in-7")
        assert res.code is None and res.id == "in-7" and res.record["id"] == "in-7"
    assert validate_record({"id": rid, "conversations": turns}) == [("malformed", "id missing or not a non-empty string")]


def test_other_string_ids_kept_verbatim() -> None:
    turns = [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]
    assert normalize({"id": " a b ", "conversations": turns}, "in-0").record["id"] == " a b "
    assert normalize({"id": "0", "conversations": turns}, "in-0").record["id"] == "0"


def test_fast_path_agrees_with_the_parsers() -> None:
    """Property: for any LLaVA-shaped record, the fast path (when it answers) gives exactly what the
    llava parser and the shared tail give; roles, white space, <image> tokens, ids, images and text
    lengths are drawn at random (hypothesis)."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from mmdata.records import _check_turns, _fast_llava, _record_id, parse_llava

    noisy = st.lists(st.sampled_from(["a", " ", "\n", "<image>", "é", "x y", "\t", "<imag", "e>"]), max_size=6).map("".join)
    value = st.one_of(st.sampled_from(["a", " Hi there ", "x\ny", "é?"]), st.sampled_from(["a", "bc"]), noisy)
    role = st.sampled_from(["human", "gpt", "user", "assistant", "system", "bot"])
    # Mostly clean human/gpt pairs (the fast path's case), sometimes with any role swapped in.
    pairs = st.lists(st.tuples(value, value), min_size=1, max_size=3).map(
        lambda ps: [{"from": r, "value": v} for q, a in ps for r, v in (("human", q), ("gpt", a))])
    turns = st.one_of(pairs, pairs, st.lists(st.fixed_dictionaries({"from": role, "value": value}), min_size=1, max_size=6))
    record = st.fixed_dictionaries(
        {"conversations": turns},
        optional={"id": st.one_of(st.text(max_size=3), st.integers(-5, 5)),
                  "image": st.one_of(st.none(), st.just("a.jpg"), st.lists(st.sampled_from(["a.jpg", "b.png"]), max_size=3)),
                  "meta": st.integers()})

    @settings(max_examples=600, deadline=None, derandomize=True)
    @given(record, st.integers(1, 12))
    def check(raw: dict, limit: int) -> None:
        fast = _fast_llava(raw, "d-0", limit)
        rid = _record_id(raw, "d-0")
        slow = _check_turns(raw, rid, parse_llava(raw), limit)
        if fast is not None:
            assert fast == slow and list(fast.record) == list(slow.record)
            hits.append(1)
        assert normalize(raw, "d-0", "auto", limit) == slow

    del hypothesis
    hits: list[int] = []
    check()
    assert len(hits) > 10  # the fast path answered often enough for the comparison to mean something
