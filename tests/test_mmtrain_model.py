"""The Qwen2-VL-shaped model and the accelerator layer: packing never mixes documents, on every
attention path available here, and the ViT, M-RoPE, fused ops and recompute are exact."""

from __future__ import annotations

import pytest
import torch

from mmtrain import accel as A
from mmtrain.model import build_model, mrope_cos_sin, num_params, rotate_half
from mmtrain.synthetic import SynthVocab, make_document, make_row, pack_documents

V = SynthVocab()
CPU_PATHS = [p for p in A.available_attn_impls("cpu")]


def _model(impl: str = "sdpa_doc", seed: int = 0, **kw):
    torch.manual_seed(seed)
    acc = A.Accel(kind="cpu", device=torch.device("cpu"), backend="gloo", attn_impl=impl, **kw)
    return build_model("tiny", V.size, V.image_pad, accel=acc)


def _docs(n: int, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [make_document(g, V, 60, image_prob=0.7) for _ in range(n)]


def test_cpu_offers_both_exact_paths():
    assert CPU_PATHS == ["sdpa_doc", "sdpa_mask"]


@pytest.mark.parametrize("impl", CPU_PATHS)
def test_packed_row_gives_each_documents_own_losses(impl):
    docs = _docs(5)
    assert any(d["grids"] for d in docs) and any(not d["grids"] for d in docs)
    model = _model(impl).eval()
    row = pack_documents(docs, seq_len=sum(d["ids"].numel() for d in docs) + 7)  # with tail padding
    with torch.no_grad():
        packed = model.token_losses(row)
        cu = row["cu_seqlens"].tolist()
        for i, d in enumerate(docs):
            alone = model.token_losses(pack_documents([d], seq_len=None))
            torch.testing.assert_close(packed[cu[i]:cu[i + 1]], alone, rtol=1e-5, atol=1e-5)
            assert alone.sum() > 0


def test_whole_row_causal_attention_would_leak_across_documents():
    # The negative control: the same row with one segment spanning everything changes later documents.
    docs = _docs(3)
    model = _model().eval()
    row = pack_documents(docs, None)
    leaky = dict(row, cu_seqlens=torch.tensor([0, row["input_ids"].shape[1]], dtype=torch.int32), cu_seqlens_padded=None)
    with torch.no_grad():
        a, b = model.token_losses(row), model.token_losses(leaky)
    n0 = docs[0]["ids"].numel()
    torch.testing.assert_close(a[:n0], b[:n0])
    assert (a[n0:] - b[n0:]).abs().max() > 1e-3


def test_attention_paths_agree_forward_and_backward():
    row = make_row(3, 200)
    grads = []
    for impl in CPU_PATHS:
        m = _model(impl)
        loss, n = m(row)
        loss.backward()
        grads.append((loss.detach(), n, [p.grad.clone() for p in m.parameters()]))
    (l0, n0, g0), (l1, n1, g1) = grads
    assert n0 == n1 == row["num_loss_tokens"]
    torch.testing.assert_close(l0, l1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("impl", CPU_PATHS)
def test_varlen_attention_matches_dense_reference(impl, causal):
    g = torch.Generator().manual_seed(0)
    T, H, KV, D = 23, 4, 2, 8
    q, k, v = (torch.randn(T, h, D, generator=g) for h in (H, KV, KV))
    cu = torch.tensor([0, 5, 6, 17, 23], dtype=torch.int32)
    out = A.Accel("cpu", torch.device("cpu"), "gloo", impl).varlen_attention(q, k, v, cu, 11, causal)
    kr, vr = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
    ref = torch.empty_like(q)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        sc = torch.einsum("qhd,khd->hqk", q[s:e], kr[s:e]) / D**0.5
        if causal:
            sc = sc.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf"))
        ref[s:e] = torch.einsum("hqk,khd->qhd", sc.softmax(-1), vr[s:e])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_vit_features_of_packed_images_equal_each_image_alone():
    model = _model().eval()
    g = torch.Generator().manual_seed(2)
    grids = torch.tensor([[1, 4, 6], [1, 2, 2], [1, 6, 4]])
    pix = [torch.randn(int(t * h * w), 1176, generator=g) for t, h, w in grids.tolist()]
    with torch.no_grad():
        together = model.visual(torch.cat(pix), grids)
        alone = torch.cat([model.visual(p, grids[i:i + 1]) for i, p in enumerate(pix)])
    assert together.shape == (sum(p.shape[0] for p in pix) // 4, 128)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_image_features_land_on_the_placeholders():
    model = _model().eval()
    row = pack_documents([d for d in _docs(6) if d["grids"]][:2], None)
    with torch.no_grad():
        base = model.embed(row)
        row2 = dict(row, pixel_values=row["pixel_values"] + 1.0)
        moved = model.embed(row2)
    changed = (base - moved).abs().sum(-1) > 0
    assert torch.equal(changed, row["input_ids"][0] == V.image_pad)


def test_placeholder_count_mismatch_is_an_error():
    model = _model().eval()
    row = pack_documents([d for d in _docs(6) if d["grids"]][:1], None)
    bad = dict(row, input_ids=row["input_ids"].masked_fill(row["input_ids"] == V.image_pad, 7))
    with pytest.raises(ValueError, match="image placeholder tokens"):
        model(bad)


def test_uint8_pixels_are_normalized_like_the_hf_processor():
    model = _model().eval()
    raw = torch.randint(0, 256, (8, 1176), dtype=torch.uint8)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).repeat_interleave(392)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).repeat_interleave(392)
    torch.testing.assert_close(model.visual.normalize(raw), (raw.float() / 255 - mean) / std)


def test_mrope_with_equal_rows_is_plain_rope():
    inv = 1.0 / 10000 ** (torch.arange(0, 32, 2).float() / 32)
    pos = torch.arange(10)
    cos, sin = mrope_cos_sin(pos.expand(3, -1), inv, (4, 6, 6))
    f = pos.float()[:, None] * inv
    emb = torch.cat([f, f], -1)
    torch.testing.assert_close(cos[:, 0], emb.cos())
    # a height/width offset changes only its own frequency section
    p2 = pos.expand(3, -1).clone()
    p2[1] += 5
    c2, _ = mrope_cos_sin(p2, inv, (4, 6, 6))
    diff = (c2 - cos).abs().amax((0, 1)) > 0
    assert diff[:4].sum() == 0 and diff[4:10].all() and diff[10:16].sum() == 0
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]


def test_fused_rmsnorm_path_matches_reference():
    x, w = torch.randn(5, 16), torch.randn(16)
    torch.testing.assert_close(A.rms_norm_torch(x, w, 1e-6), A.rms_norm_ref(x, w, 1e-6))
    acc = A.Accel("cpu", torch.device("cpu"), "gloo", "sdpa_doc", fused_rmsnorm=True, fused_swiglu=True)
    torch.testing.assert_close(acc.rms_norm(x, w, 1e-6), A.rms_norm_ref(x, w, 1e-6))
    gu = torch.randn(3, 8)
    torch.testing.assert_close(acc.swiglu(gu), torch.nn.functional.silu(gu[:, :4]) * gu[:, 4:])


@pytest.mark.parametrize("method,n", [("block", 1), ("uniform", 2)])
def test_activation_recompute_gives_identical_gradients(method, n):
    row = make_row(5, 160)
    out = []
    for rc in (None, method):
        m = _model()
        m.set_recompute(rc, n)
        loss, _ = m(row)
        loss.backward()
        out.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b)


def test_text_only_row_still_gives_every_parameter_a_gradient():
    g = torch.Generator().manual_seed(3)
    docs = [make_document(g, V, 60, image_prob=0.0) for _ in range(3)]
    m = _model()
    loss, n = m(pack_documents(docs, None))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    assert m.visual.patch_embed.weight.grad.abs().sum() == 0


def test_bf16_autocast_runs_and_stays_close():
    row = make_row(1, 128)
    m = _model()
    acc = m.accel
    with torch.no_grad():
        ref, n = m(row)
        with acc.autocast(True):
            low, _ = m(row)
    assert abs(low.item() - ref.item()) / ref.item() < 0.02


def test_model_sizes():
    sizes = {name: build_model(name, 151936, 151655, device="meta") for name in ("100m", "0.5b", "1b", "2b")}
    assert 90e6 < num_params(sizes["100m"], exclude_embeddings=True) < 110e6
    assert 2.1e9 < num_params(sizes["2b"]) < 2.3e9  # Qwen2-VL-2B: 2.21B
    assert num_params(sizes["0.5b"]) < num_params(sizes["1b"]) < num_params(sizes["2b"])
    from mmtrain.args import MODEL_NAMES
    from mmtrain.model import MODEL_SHAPES

    assert tuple(MODEL_SHAPES) == MODEL_NAMES
    with pytest.raises(ValueError, match="unknown model"):
        build_model("huge", 10, 1, device="meta")


def test_device_detection_without_torch_npu():
    assert A.detect_device("cpu") == "cpu"
    if A.try_import_torch_npu() is None and not torch.cuda.is_available():
        assert A.detect_device("auto") == "cpu"
        with pytest.raises(ValueError, match="torch_npu"):
            A.detect_device("npu")
        with pytest.raises(ValueError, match="CUDA"):
            A.detect_device("cuda")
    with pytest.raises(ValueError, match="--device"):
        A.detect_device("tpu")
    acc = A.get_accel("cpu", use_flash_attn=True)
    assert (acc.backend, acc.attn_impl) == ("gloo", "sdpa_doc")
    with pytest.raises(ValueError, match="not available"):
        A.get_accel("cpu", attn_impl="npu_fusion")
