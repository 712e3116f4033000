"""Documents of one packed row -> the canonical batch dict (INTEGRATION.md s.6, docs/DESIGN.md).

Each document keeps its own positions (M-RoPE and 1-D, both from 0) and its first label -100, so
one global label shift equals a per-document shift and attention can be cut at ``cu_seqlens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mmdata.loader.pixels import decode_into
from mmdata.models.patches import PatchProcessor, pixel_values_from_images
from mmdata.models.rope import mrope_position_ids_row

IGNORE = -100


@dataclass
class Document:
    """One encoded sample: ids/labels int32 [L], its images still encoded with their stored
    (height, width) (decoded when the row is built: :func:`decode_images`) and their (t, h, w) grids."""

    sample_id: str
    input_ids: np.ndarray
    labels: np.ndarray
    images: list[bytes] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
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
    pixel_dtype: str = "float32"  # "uint8": patch rows to normalise on the device; "images": see collate_row
    temporal_patch_size: int = 2
    patch_size: int = 14

    def processor(self) -> PatchProcessor:
        return PatchProcessor(self.patch_size, self.merge_size, self.temporal_patch_size)


def decode_images(docs: list[Document], shared_memory: bool = False) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """Every document's images decoded, in order, straight into one uint8 buffer (``[h, w, 3]`` each,
    back to back; shared memory if asked). A document with an image that does not decode is left out
    of the buffer: ``(its position in docs, why)`` is returned for it."""
    total = sum(h * w * 3 for d in docs for h, w in d.sizes)
    buf = torch.empty(total, dtype=torch.uint8)
    if shared_memory and total:
        buf.share_memory_()
    arr = buf.numpy()
    at = 0
    failed: list[tuple[int, str]] = []
    for j, d in enumerate(docs):
        start = at
        for k, (data, (h, w)) in enumerate(zip(d.images, d.sizes)):
            try:
                decode_into(data, arr[at:at + h * w * 3].reshape(h, w, 3))
            except Exception as e:  # PIL raises many types on corrupt data
                failed.append((j, f"image {k}: {type(e).__name__}: {e}"))
                at = start
                break
            at += h * w * 3
    return buf[:at], failed


def _positions(docs: list[Document], lens: np.ndarray, ids: np.ndarray, local: np.ndarray,
               spec: RowSpec) -> np.ndarray:
    """M-RoPE positions ``[3, real]`` of the row's documents, each from 0 (vectorised over the row)."""
    if spec.vision_start_id is None or spec.image_pad_id is None:
        return np.broadcast_to(local, (3, local.shape[0]))
    return mrope_position_ids_row(ids, lens, [d.grids for d in docs], spec.merge_size, spec.vision_start_id,
                                  spec.image_pad_id)


def collate_row(docs: list[Document], spec: RowSpec, images: torch.Tensor | None = None,
                shared_memory: bool = False, shipped: dict | None = None) -> dict:
    """Concatenate ``docs`` into one B=1 row. An empty row becomes one pad token with no loss, so
    every rank still yields a row for every step. ``images``: the docs' decoded images
    (:func:`decode_images`). ``shared_memory``: build the pixels in shared memory (DataLoader workers).

    ``pixel_values`` is built from ``images`` by :func:`mmdata.models.patches.pixel_values_from_images`
    (float32 or uint8 patch rows); with ``pixel_dtype="images"`` the batch carries ``images`` itself
    instead (4x fewer bytes than float32 rows and no patch work on the host) and the device runs that
    same function: the result is bit-identical. ``shipped``: the docs' images still encoded
    (:func:`mmdata.loader.devdecode.ship_images`, ``image_decode="device"``), carried instead of ``images``."""
    if not docs:
        docs = [Document("", np.asarray([spec.pad_id], np.int32), np.asarray([IGNORE], np.int32))]
    lens = np.fromiter((len(d.input_ids) for d in docs), dtype=np.int64, count=len(docs))
    real = int(lens.sum())
    total = spec.seq_len if spec.pad_to_seq_len and real < spec.seq_len else real

    ids = np.full(total, spec.pad_id, dtype=np.int64)
    labels = np.full(total, IGNORE, dtype=np.int64)
    pos3 = np.zeros((3, total), dtype=np.int64)
    pos1 = np.zeros(total, dtype=np.int64)
    starts = np.zeros(len(docs), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    np.concatenate([d.input_ids for d in docs], out=ids[:real], casting="unsafe")
    np.concatenate([d.labels for d in docs], out=labels[:real], casting="unsafe")
    labels[starts] = IGNORE  # every document's first token: no loss (also after truncation)
    local = np.arange(real, dtype=np.int64) - np.repeat(starts, lens)
    pos1[:real] = local
    pos3[:, :real] = _positions(docs, lens, ids[:real], local, spec)
    attn = np.zeros(total, dtype=np.int64)
    attn[:real] = 1

    cu = np.zeros(len(docs) + 1, dtype=np.int32)
    np.cumsum(lens, out=cu[1:])
    cu_padded = cu.copy()
    cu_padded[-1] = total  # tail padding folded into the last document
    grids = [g for d in docs for g in d.grids]
    grid_thw = torch.tensor(grids, dtype=torch.int64).reshape(-1, 3)
    if images is None and shipped is None:
        images = decode_images(docs)[0]
    pixels: dict = {"images": images} if shipped is None else shipped
    if shipped is None and spec.pixel_dtype != "images":
        n_patch = sum(t * h * w for t, h, w in grids)
        width = 3 * spec.temporal_patch_size * spec.patch_size**2
        normalize = spec.pixel_dtype == "float32"
        pixel_values = torch.empty((n_patch, width), dtype=torch.float32 if normalize else torch.uint8)
        if shared_memory and n_patch:
            pixel_values.share_memory_()  # a DataLoader worker then hands it over without another copy
        pixels = {"pixel_values": pixel_values_from_images(images, grid_thw, spec.processor(), normalize, pixel_values)}
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
        **pixels,
        "image_grid_thw": grid_thw,
        "sample_ids": [d.sample_id for d in docs],
        "num_loss_tokens": int(np.count_nonzero(labels != IGNORE)),
        "num_real_tokens": real,
    }
