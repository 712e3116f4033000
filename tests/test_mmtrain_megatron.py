"""The loader's packed rows against megatron-core's own code (0.16, on CPU with gloo, TP = PP = 1).

megatron-core builds `PackedSeqParams` from our batch itself (`get_thd_batch_on_this_cp_rank`), and its
`GPTModel` (local spec) run on a packed row with `qkv_format="thd"` gives every document the losses it
gets alone. What megatron-core cannot do on CPU, found by running it (0.16.1):
- `RotaryEmbedding.get_emb` (models/common/embeddings/rotary_pos_embedding.py:162) moves `inv_freq`
  to `torch.cuda.current_device()`: "AssertionError: Torch not compiled with CUDA enabled". So the
  model here uses learned absolute positions (our per-document `text_position_ids`), not RoPE.
- `DotProductAttention.forward` (transformer/dot_product_attention.py:153) asserts
  `packed_seq_params is None` ("Packed sequence is not supported by DotProductAttention. Please use
  TEDotProductAttention instead"), and for unpacked input allocates its score buffer with
  `GlobalMemoryBuffer.get_tensor` on `torch.cuda.current_device()` (core/utils.py:631). THD attention
  is Transformer Engine's (CUDA only). So the spec's `core_attention` is swapped for a small CPU
  module (exact attention per `cu_seqlens_q_padded` segment): everything else, the embedding, the
  layers, QKV and output projections, the THD reshapes in `Attention.forward` and the
  vocab-parallel loss, is megatron-core's own code.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmdata.loader.adapters import to_megatron_bridge
from mmdata.loader.batch import Document, RowSpec, collate_row
from mmtrain.accel import sdpa_per_document

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Apex / Transformer Engine is not installed": expected on CPU
    mcore = pytest.importorskip("megatron.core")
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.transformer_config import TransformerConfig
    from megatron.core.utils import get_thd_batch_on_this_cp_rank

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 128


class CpuVarlenAttention(torch.nn.Module):
    """`core_attention` for CPU: causal attention within each packed segment (THD) or per sequence (SBHD)."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, **kwargs):
        super().__init__()

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            cu = packed_seq_params.cu_seqlens_q_padded
            cu = packed_seq_params.cu_seqlens_q if cu is None else cu
            return sdpa_per_document(query, key, value, cu, int(packed_seq_params.max_seqlen_q), causal=True)
        s, b, n, d = query.shape  # [s, b, heads, head_dim] -> [s, b, heads * head_dim]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != n)
        return out.permute(2, 0, 1, 3).reshape(s, b, n * d)


@pytest.fixture(scope="module")
def megatron(tmp_path_factory):
    """A process group of one (gloo) and megatron-core's parallel state with TP = PP = 1."""
    started = not torch.distributed.is_initialized()
    if started:
        store = tmp_path_factory.mktemp("mcore") / "store"
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    yield
    parallel_state.destroy_model_parallel()
    if started:
        torch.distributed.destroy_process_group()


def _model() -> GPTModel:
    cfg = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                            ffn_hidden_size=128, use_cpu_initialization=True, hidden_dropout=0.0,
                            attention_dropout=0.0, params_dtype=torch.float32)
    spec = get_gpt_layer_local_spec()
    spec.submodules.self_attention.submodules.core_attention = CpuVarlenAttention
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = GPTModel(config=cfg, transformer_layer_spec=spec, vocab_size=VOCAB, max_sequence_length=64,
                     position_embedding_type="learned_absolute")
    return m.eval()


def _row(lengths=(7, 11, 5), seq_len=32) -> dict:
    """A canonical packed row (the loader's collate) of text documents, with tail padding."""
    rng = np.random.default_rng(0)
    docs = []
    for i, n in enumerate(lengths):
        ids = rng.integers(1, VOCAB, n).astype(np.int32)
        labels = ids.copy()
        labels[: n // 3] = -100  # a prompt part without loss
        docs.append(Document(f"d{i}", ids, labels))
    return collate_row(docs, RowSpec(seq_len=seq_len, pad_id=0, vision_start_id=None, image_pad_id=None,
                                     pad_to_seq_len=True))


def _mcore_batch(row: dict) -> tuple[dict, PackedSeqParams]:
    """Our Megatron-Bridge adapter's keys, handed to megatron-core's own THD batch function."""
    b = to_megatron_bridge(row)
    batch = {"tokens": b["input_ids"], "labels": b["labels"], "loss_mask": b["loss_mask"],
             "position_ids": b["position_ids"]}
    cup = b.get("cu_seqlens_q_padded", b["cu_seqlens_q"])
    return get_thd_batch_on_this_cp_rank(batch, b["cu_seqlens_q"], cup, b["max_seqlen_q"].reshape(1))


def test_megatron_core_builds_packed_seq_params_from_our_batch(megatron):
    row = _row()
    batch, psp = _mcore_batch(row)
    assert isinstance(psp, PackedSeqParams) and psp.qkv_format == "thd"
    assert psp.cu_seqlens_q.tolist() == psp.cu_seqlens_kv.tolist() == [0, 7, 18, 23]
    assert psp.cu_seqlens_q_padded.tolist() == [0, 7, 18, 32]  # tail padding folded into the last document
    assert psp.max_seqlen_q == psp.max_seqlen_kv == 14
    assert psp.cu_seqlens_q.dtype == torch.int32
    assert batch["tokens"].shape == (1, 32) and torch.equal(batch["tokens"], row["input_ids"])


def _doc_losses(model: GPTModel, row: dict, psp: PackedSeqParams | None = None) -> list[float]:
    batch, built = _mcore_batch(row)
    psp = psp or built
    with torch.no_grad():
        loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"], packed_seq_params=psp)
    cu = built.cu_seqlens_q.tolist()  # the documents, whatever attention was told
    mask = batch["loss_mask"]
    return [float((loss * mask)[0, s:e].sum()) for s, e in zip(cu[:-1], cu[1:])]


def test_gptmodel_forward_on_a_packed_row_gives_each_document_its_own_losses(megatron):
    model = _model()
    row = _row()
    packed = _doc_losses(model, row)
    b = to_megatron_bridge(row)
    cu = b["cu_seqlens_q"].tolist()
    for i, (s, e) in enumerate(zip(cu[:-1], cu[1:])):
        ids, labels, mask = b["input_ids"][:, s:e], b["labels"][:, s:e], b["loss_mask"][:, s:e]
        with torch.no_grad():  # the document alone, unpacked (SBHD), positions 0..n-1
            alone = model(ids, torch.arange(e - s)[None], None, labels=labels)
        assert packed[i] == pytest.approx(float((alone * mask).sum()), rel=1e-5, abs=1e-5), i
        assert packed[i] > 0


def test_one_segment_for_the_whole_row_would_leak_across_documents(megatron):
    """The check above can fail: attention over the whole row changes every document after the first."""
    model = _model()
    row = _row()
    right = _doc_losses(model, row)
    whole = torch.tensor([0, 32], dtype=torch.int32)
    wrong = _doc_losses(model, row, PackedSeqParams(qkv_format="thd", cu_seqlens_q=whole, cu_seqlens_kv=whole,
                                                   max_seqlen_q=32, max_seqlen_kv=32))
    assert wrong[0] == pytest.approx(right[0], rel=1e-5)  # the first document sees only itself either way
    assert abs(wrong[1] - right[1]) > 1e-3 and abs(wrong[2] - right[2]) > 1e-3  # the others now see it
