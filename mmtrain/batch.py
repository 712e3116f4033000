"""Micro-batches from packed rows: concatenate `mbs` rows into one THD row (as Megatron-Bridge does),
move it to the device, and read the counts the recipe needs (loss tokens, real tokens, FLOPs inputs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmtrain.model import IGNORE_INDEX, segment_bounds


@dataclass
class RowStats:
    """What a micro-batch holds: tokens in all, real (non-padding) tokens, loss tokens, doc and frame sizes."""

    tokens: int
    real_tokens: int
    loss_tokens: int
    doc_lens: list[int]
    frame_patches: list[int]


def concat_rows(rows: list[dict]) -> dict:
    """One THD row from several: ids/labels/positions/pixels concatenated, segments offset.

    Each document's first label is -100, so no loss crosses a row boundary. The result carries
    `cu_seqlens_padded` (attention segments covering every token) and the logical `cu_seqlens`.
    """
    if len(rows) == 1:
        return rows[0]
    cu_pad, cu_log, off = [0], [0], 0
    for r in rows:
        T = r["input_ids"].shape[1]
        cu_pad += [off + b for b in segment_bounds(r, T)[1:]]
        log = r["cu_seqlens"].tolist()
        cu_log += [off + b for b in log[1:]]
        off += T
    out = {
        "input_ids": torch.cat([r["input_ids"] for r in rows], 1),
        "labels": torch.cat([r["labels"] for r in rows], 1),
        "position_ids": torch.cat([r["position_ids"] for r in rows], -1),
        "cu_seqlens": torch.tensor(cu_log, dtype=torch.int32),
        "cu_seqlens_padded": torch.tensor(cu_pad, dtype=torch.int32),
        "max_seqlen": max(int(r["max_seqlen"]) for r in rows),
        **_pixels(rows),
        "image_grid_thw": torch.cat([r["image_grid_thw"].reshape(-1, 3) for r in rows], 0),
        "num_real_tokens": sum(real_tokens(r) for r in rows),
    }
    if all("attention_mask" in r for r in rows):
        out["attention_mask"] = torch.cat([r["attention_mask"] for r in rows], 1)
    return out


def _pixels(rows: list[dict]) -> dict:
    """The rows' images (``pixel_dtype="images"``: flat uint8, patched on the device) or pixel rows, in order."""
    if all("images" in r for r in rows):
        return {"images": torch.cat([r["images"].reshape(-1) for r in rows], 0)}
    if all("image_bytes" in r for r in rows):  # --image-decode device: still JPEG bytes
        from mmdata.loader.devdecode import concat_shipped

        return concat_shipped(rows)
    return {"pixel_values": torch.cat([r["pixel_values"] for r in rows], 0)}


def real_tokens(row: dict) -> int:
    """Non-padding tokens of a row: the loader's count, else the attention mask, else the logical end."""
    if "num_real_tokens" in row:
        return int(row["num_real_tokens"])
    if "attention_mask" in row:
        return int(row["attention_mask"].sum())
    return int(row["cu_seqlens"][-1])


def row_stats(row: dict) -> RowStats:
    """Counts of one (micro-batch) row, read on the host before it moves to the device."""
    cu = row["cu_seqlens"].tolist()
    grid = row.get("image_grid_thw")
    frames = []
    if grid is not None:
        for t, h, w in grid.reshape(-1, 3).tolist():
            frames += [h * w] * t
    return RowStats(
        tokens=row["input_ids"].shape[1], real_tokens=real_tokens(row),
        loss_tokens=int((row["labels"][0, 1:] != IGNORE_INDEX).sum()),
        doc_lens=[b - a for a, b in zip(cu[:-1], cu[1:])], frame_patches=frames,
    )


def split_documents(row: dict, image_pad: int) -> list[dict]:
    """The documents of a packed row as rows of their own (ids, labels, positions, their images):
    the one-by-one baseline of the packing tests and benchmarks."""
    cu = row["cu_seqlens"].tolist()
    ids, grid, pix = row["input_ids"][0], row["image_grid_thw"].reshape(-1, 3), row["pixel_values"]
    gi = pi = 0
    out = []
    for s, e in zip(cu[:-1], cu[1:]):
        need, gj, npatch = int((ids[s:e] == image_pad).sum()) * 4, gi, 0
        while npatch < need:
            npatch += int(grid[gj].prod())
            gj += 1
        out.append({"input_ids": row["input_ids"][:, s:e], "labels": row["labels"][:, s:e],
                    "position_ids": row["position_ids"][..., s:e], "cu_seqlens": torch.tensor([0, e - s], dtype=torch.int32),
                    "max_seqlen": e - s, "pixel_values": pix[pi:pi + npatch], "image_grid_thw": grid[gi:gj],
                    "num_real_tokens": e - s})
        gi, pi = gj, pi + npatch
    return out


MODEL_KEYS = ("input_ids", "labels", "position_ids", "cu_seqlens", "cu_seqlens_padded", "max_seqlen",
              "pixel_values", "image_grid_thw")


def to_device(row: dict, device: torch.device, decoder=None) -> dict:
    """The keys the model reads, on the device; segment bounds and the grid stay on the host. Rows of
    ``--image-decode device`` have their JPEGs decoded on the device first (``decoder``: a
    :class:`mmdata.loader.devdecode.JpegDecoder`, default the device's own, else the CPU's)."""
    out = {}
    if "image_bytes" in row and "pixel_values" not in row:  # JPEG bytes: decoded on the device, then patched
        from mmdata.loader import pixel_values_from_images
        from mmdata.loader.devdecode import decode_shipped

        images = decode_shipped(row, device, decoder)
        out["pixel_values"] = pixel_values_from_images(images, row["image_grid_thw"], normalize=False)
    elif "images" in row and "pixel_values" not in row:  # decoded images: the patch rows are made on the device
        from mmdata.loader import pixel_values_from_images

        images = row["images"].to(device, non_blocking=True)
        out["pixel_values"] = pixel_values_from_images(images, row["image_grid_thw"], normalize=False)
    for k in MODEL_KEYS:
        v = row.get(k)
        if v is None:
            continue
        if isinstance(v, torch.Tensor) and k not in ("cu_seqlens", "cu_seqlens_padded", "image_grid_thw"):
            v = v.to(device, non_blocking=True)
        out[k] = v
    return out
