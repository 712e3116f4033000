"""Synthetic canonical packed rows (INTEGRATION.md s.6) for tests and benchmarks, no data needed.

Documents look like `prompt <|vision_start|> <|image_pad|> x k <|vision_end|> answer` with learnable
answers (runs of consecutive ids), Qwen2-VL M-RoPE positions per document, and random patches.
`SyntheticLoader` mimics `mmdata.loader.PackedLoader`: row g goes to rank g % world_size, and its
state is the number of rows this rank consumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SynthVocab:
    size: int = 512
    pad_id: int = 0
    vision_start: int = 500
    vision_end: int = 501
    image_pad: int = 502
    text_lo: int = 10
    text_hi: int = 490


def mrope_positions(ids: torch.Tensor, grids: list[tuple[int, int, int]], image_pad: int, merge: int = 2) -> torch.Tensor:
    """Qwen2-VL `get_rope_index` for one document: [3, L], text arange, image blocks on the merged grid."""
    out, st, i, img = [], 0, 0, 0
    L = ids.numel()
    is_pad = (ids == image_pad).tolist()
    while i < L:
        if is_pad[i]:
            t, h, w = grids[img]
            gh, gw = h // merge, w // merge
            ti = torch.arange(t).repeat_interleave(gh * gw)
            hi = torch.arange(gh).repeat_interleave(gw).repeat(t)
            wi = torch.arange(gw).repeat(t * gh)
            block = torch.stack([ti, hi, wi]) + st
            out.append(block)
            st = int(block.max()) + 1
            i += t * gh * gw
            img += 1
        else:
            j = i
            while j < L and not is_pad[j]:
                j += 1
            out.append(torch.arange(st, st + j - i).expand(3, -1))
            st += j - i
            i = j
    return torch.cat(out, 1)


def make_document(g: torch.Generator, vocab: SynthVocab, max_len: int, image_prob: float = 0.6) -> dict:
    """One conversation: ids, unshifted labels (prompt and image ignored, first label -100), positions, pixels."""
    prompt = torch.randint(vocab.text_lo, vocab.text_hi, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g)
    parts, lab, grids, pix = [prompt], [torch.full_like(prompt, IGNORE_INDEX)], [], []
    if torch.rand(1, generator=g).item() < image_prob:
        gh, gw = (int(x) for x in torch.randint(1, 4, (2,), generator=g))
        k = gh * gw
        img = torch.tensor([vocab.vision_start] + [vocab.image_pad] * k + [vocab.vision_end])
        parts.append(img)
        lab.append(torch.full_like(img, IGNORE_INDEX))
        grids.append((1, 2 * gh, 2 * gw))
        pix.append(torch.randn(4 * k, 1176, generator=g))
    used = sum(p.numel() for p in parts)
    n_ans = int(torch.randint(4, 40, (1,), generator=g))
    n_ans = max(1, min(n_ans, max_len - used))
    start = int(torch.randint(vocab.text_lo, vocab.text_hi - n_ans, (1,), generator=g))
    ans = torch.arange(start, start + n_ans)
    parts.append(ans)
    lab.append(ans.clone())
    ids = torch.cat(parts)
    labels = torch.cat(lab)
    labels[0] = IGNORE_INDEX
    return {"ids": ids, "labels": labels, "pos": mrope_positions(ids, grids, vocab.image_pad), "grids": grids,
            "pix": torch.cat(pix) if pix else torch.zeros(0, 1176)}



def pack_documents(docs: list[dict], seq_len: int | None, vocab: SynthVocab = SynthVocab()) -> dict:
    """Concatenate documents into one canonical row, padded at the tail to seq_len (if given)."""
    ids = torch.cat([d["ids"] for d in docs])
    labels = torch.cat([d["labels"] for d in docs])
    pos = torch.cat([d["pos"] for d in docs], 1)
    lens = [d["ids"].numel() for d in docs]
    real = ids.numel()
    T = seq_len or real
    if real > T:
        raise ValueError(f"documents of {real} tokens do not fit a row of {T}")
    pad = T - real
    ids = torch.cat([ids, torch.full((pad,), vocab.pad_id)])
    labels = torch.cat([labels, torch.full((pad,), IGNORE_INDEX)])
    pos = torch.cat([pos, torch.zeros(3, pad, dtype=pos.dtype)], 1)
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    cu_pad = cu.clone()
    cu_pad[-1] = T
    grids = [gr for d in docs for gr in d["grids"]]
    n_loss = int((labels[1:] != IGNORE_INDEX).sum())
    return {
        "input_ids": ids.unsqueeze(0), "labels": labels.unsqueeze(0),
        "attention_mask": (torch.arange(T) < real).long().unsqueeze(0),
        "position_ids": pos.unsqueeze(1).long(),
        "cu_seqlens": cu, "cu_seqlens_padded": cu_pad, "max_seqlen": int(max(cu_pad.diff())),
        "seqlens": torch.tensor(lens), "pixel_values": torch.cat([d["pix"] for d in docs]),
        "image_grid_thw": torch.tensor(grids, dtype=torch.long).reshape(-1, 3),
        "sample_ids": [f"doc{i}" for i in range(len(docs))], "num_loss_tokens": n_loss, "num_real_tokens": real,
    }


def make_row(index: int, seq_len: int, seed: int = 0, vocab: SynthVocab = SynthVocab()) -> dict:
    """Global row `index` of the synthetic plan: documents until the next one would not fit."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    docs, used = [], 0
    while True:
        d = make_document(g, vocab, seq_len - used)
        if used + d["ids"].numel() > seq_len:
            break
        docs.append(d)
        used += d["ids"].numel()
        if seq_len - used < 16:
            break
    if not docs:
        raise ValueError(f"seq_len {seq_len} is too short for a synthetic document")
    return pack_documents(docs, seq_len, vocab)


class SyntheticLoader:
    """Endless, resumable stream of synthetic packed rows with PackedLoader's rank split and state."""

    def __init__(self, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1, vocab: SynthVocab = SynthVocab()):
        self.seq_len, self.seed, self.rank, self.world_size, self.vocab = seq_len, seed, rank, world_size, vocab
        self.consumed_rows = 0  # global rows consumed before this rank's next one, / world_size

    def __iter__(self):
        while True:
            g = self.rank + self.consumed_rows * self.world_size
            row = make_row(g, self.seq_len, self.seed, self.vocab)
            self.consumed_rows += 1
            yield row

    def state_dict(self) -> dict:
        """A global position (rows consumed by all ranks), as PackedLoader's: resumable on any world size."""
        return {"consumed_rows": self.consumed_rows, "global_rows": self.consumed_rows * self.world_size,
                "seed": self.seed}

    def load_state_dict(self, sd: dict) -> None:
        if "global_rows" in sd:
            self.consumed_rows = int(sd["global_rows"]) // self.world_size
        else:
            self.consumed_rows = int(sd["consumed_rows"])
