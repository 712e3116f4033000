"""Documents of one packed row -> the canonical batch dict (INTEGRATION.md s.6, docs/DESIGN.md).

Each document keeps its own positions (M-RoPE and 1-D, both from 0) and its first label -100, so
one global label shift equals a per-document shift and attention can be cut at ``cu_seqlens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mmdata.loader.pixels import fill_rows
from mmdata.models.rope import mrope_position_ids, text_position_ids

IGNORE = -100


@dataclass
class Document:
    """One encoded sample: ids/labels int32 [L], its images as uint8 patch frames [P, C, p*p]
    (:func:`mmdata.loader.pixels.decode_frame`) and their (t, h, w) grids."""

    sample_id: str
    input_ids: np.ndarray
    labels: np.ndarray
    pixels: list[np.ndarray] = field(default_factory=list)
    grids: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class RowSpec:
    """How rows are laid out: length budget, padding, and the ids M-RoPE needs."""

    seq_len: int
    pad_id: int
    vision_start_id: int | None
    image_pad_id: int | None
    merge_size: int = 2
    pad_to_seq_len: bool = False
    pixel_dtype: str = "float32"
    temporal_patch_size: int = 2


def _positions(doc: Document, spec: RowSpec) -> np.ndarray:
    n = len(doc.input_ids)
    if spec.vision_start_id is None or spec.image_pad_id is None:
        return np.broadcast_to(text_position_ids(n), (3, n))
    grid = np.asarray(doc.grids, dtype=np.int64).reshape(-1, 3)
    return mrope_position_ids(doc.input_ids, grid, spec.merge_size, spec.vision_start_id, spec.image_pad_id)


def collate_row(docs: list[Document], spec: RowSpec, shared_memory: bool = False) -> dict:
    """Concatenate ``docs`` into one B=1 row. An empty row becomes one pad token with no loss, so
    every rank still yields a row for every step. ``shared_memory``: build the pixels in shared memory
    (inside DataLoader workers)."""
    if not docs:
        docs = [Document("", np.asarray([spec.pad_id], np.int32), np.asarray([IGNORE], np.int32))]
    lens = np.fromiter((len(d.input_ids) for d in docs), dtype=np.int64, count=len(docs))
    real = int(lens.sum())
    total = spec.seq_len if spec.pad_to_seq_len and real < spec.seq_len else real

    ids = np.full(total, spec.pad_id, dtype=np.int64)
    labels = np.full(total, IGNORE, dtype=np.int64)
    pos3 = np.zeros((3, total), dtype=np.int64)
    pos1 = np.zeros(total, dtype=np.int64)
    at = 0
    for d, n in zip(docs, lens.tolist()):
        ids[at:at + n] = d.input_ids
        labels[at:at + n] = d.labels
        labels[at] = IGNORE  # every document's first token: no loss (also after truncation)
        pos3[:, at:at + n] = _positions(d, spec)
        pos1[at:at + n] = np.arange(n)
        at += n
    attn = np.zeros(total, dtype=np.int64)
    attn[:real] = 1

    cu = np.zeros(len(docs) + 1, dtype=np.int32)
    np.cumsum(lens, out=cu[1:])
    cu_padded = cu.copy()
    cu_padded[-1] = total  # tail padding folded into the last document
    grids = [g for d in docs for g in d.grids]
    frames = [p for d in docs for p in d.pixels]
    n_patch = sum(f.shape[0] for f in frames)
    width = (frames[0].shape[1] * frames[0].shape[2] if frames else 3 * 196) * spec.temporal_patch_size
    pixel_values = torch.empty((n_patch, width), dtype=torch.float32 if spec.pixel_dtype == "float32" else torch.uint8)
    if shared_memory and n_patch:
        pixel_values.share_memory_()  # a DataLoader worker then hands it over without another copy
    fill_rows(frames, spec.temporal_patch_size, spec.pixel_dtype, out=pixel_values.numpy())
    return {
        "input_ids": torch.from_numpy(ids).unsqueeze(0),
        "labels": torch.from_numpy(labels).unsqueeze(0),
        "attention_mask": torch.from_numpy(attn).unsqueeze(0),
        "position_ids": torch.from_numpy(pos3).unsqueeze(1),
        "text_position_ids": torch.from_numpy(pos1).unsqueeze(0),
        "cu_seqlens": torch.from_numpy(cu),
        "cu_seqlens_padded": torch.from_numpy(cu_padded),
        "max_seqlen": int(np.diff(cu_padded).max()),
        "seqlens": torch.from_numpy(lens),
        "pixel_values": pixel_values,
        "image_grid_thw": torch.tensor(grids, dtype=torch.int64).reshape(-1, 3),
        "sample_ids": [d.sample_id for d in docs],
        "num_loss_tokens": int(np.count_nonzero(labels != IGNORE)),
        "num_real_tokens": real,
    }
