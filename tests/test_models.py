"""Model families (mmdata/models) and the floors: each family's facts in one object, and the text
tools below shard/inspect so those stages never import the loader (issue 9 items 2, 3, 6)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mmdata.models import FAMILIES, get_family
from mmdata.models.family import family_for_rule
from mmdata.models.rules import get_rule
from mmdata.text.templates import CHAT_TEMPLATES, get_template


def test_every_family_names_a_rule_and_template_that_exist():
    assert set(FAMILIES) == {"qwen2vl", "qwen2_5vl", "internvl", "llava", "qwen-vl"}
    for f in FAMILIES.values():
        assert get_rule(f.rule).name == f.rule
        assert f.template in CHAT_TEMPLATES
        assert (f.processor is not None) == (f.rule in ("qwen2vl", "qwen-vl"))  # what the packed loader can feed


def test_qwen2_5vl_shares_qwen2vl_image_arithmetic():
    a, b = get_family("qwen2vl"), get_family("qwen2_5vl")
    assert a.get_rule() == b.get_rule() and a.processor == b.processor and a.mrope and b.mrope
    assert b.hf_model_types == ("qwen2_5_vl",)
    assert family_for_rule("qwen2vl") is a


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="qwen2_5vl"):
        get_family("gpt4v")


def test_template_brackets_decide_mrope():
    assert get_template("qwen2vl").mrope and not get_template("llava_v1").mrope and not get_template("plain").mrope


@pytest.mark.parametrize("rule,size,tokens,want", [
    ("qwen2vl", (9000, 40), 1280, "9000x40: aspect 225 > 200, which Qwen2-VL's processor refuses"),
    ("qwen-vl", (640, 480), 100, "640x480: qwen-vl spends 256 tokens on every image > --max-image-tokens 100"),
    ("internvl", (640, 480), 100, "640x480: internvl needs at least 256 tokens (one tile) > --max-image-tokens 100"),
])
def test_why_not_is_the_rules_own_reason(rule, size, tokens, want):
    r = get_rule(rule)
    assert r.fit(*size, 448, tokens) is None
    assert r.why_not(*size, 448, tokens) == want


def test_synthetic_rows_use_the_loaders_mrope():
    """mmtrain's synthetic rows and the loader share one M-RoPE: the positions equal the loader's on the same ids."""
    from mmdata.models.rope import mrope_position_ids
    from mmtrain.synthetic import SynthVocab, make_document
    import torch

    v = SynthVocab()
    g = torch.Generator().manual_seed(5)
    seen_image = False
    for _ in range(20):
        d = make_document(g, v, 200)
        grid = np.asarray(d["grids"], dtype=np.int64).reshape(-1, 3)
        want = mrope_position_ids(d["ids"].numpy(), grid, 2, v.vision_start, v.image_pad)
        assert np.array_equal(d["pos"].numpy(), want)
        seen_image |= bool(len(d["grids"]))
    assert seen_image


def _imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout.split()
    return set(out)


def test_shard_and_inspect_text_paths_do_not_import_the_loader_or_torch():
    mods = _imported_after(
        "from mmdata.shard.writer import write_shards\n"
        "from mmdata.inspect.plan import pack_rows\n"
        "from mmdata.text.templates import text_token_counts, encode_conversation\n"
        "from mmdata.text.tokenizer import load_tokenizer\n"
        "from mmdata.models import get_family\n"
        "import numpy as np\n"
        "tok = load_tokenizer(None)\n"
        "text_token_counts([{'conversations': [{'from': 'human', 'value': '<image>hi'}, {'from': 'gpt', 'value': 'yo'}]}], tok, 'qwen2vl')\n"
        "pack_rows(np.asarray([5, 6, 7]), 16)\n"
        "get_family('qwen2vl').get_rule()\n")
    assert not {m for m in mods if m == "mmdata.loader" or m.startswith("mmdata.loader.")}
    assert "torch" not in mods
