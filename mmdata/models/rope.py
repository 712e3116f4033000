"""Position ids for one document: Qwen2-VL's 3-D M-RoPE (``get_rope_index``) and plain 1-D text positions.

The packer computes these per document, each starting at 0, and concatenates them (INTEGRATION.md s.0).
"""

from __future__ import annotations

import numpy as np

QWEN_VISION_START_ID = 151652
QWEN_IMAGE_PAD_ID = 151655


def text_position_ids(length: int) -> np.ndarray:
    """``arange(length)`` as int64: 1-D positions of one document."""
    return np.arange(int(length), dtype=np.int64)


def mrope_position_ids(
    input_ids: np.ndarray,
    image_grid_thw: np.ndarray,
    spatial_merge_size: int = 2,
    vision_start_id: int = QWEN_VISION_START_ID,
    image_pad_id: int = QWEN_IMAGE_PAD_ID,
) -> np.ndarray:
    """Qwen2-VL M-RoPE positions ``int64 [3, L]`` (temporal, height, width) of ONE document.

    As HF ``get_rope_index`` for still images: an image is ``vision_start`` immediately followed by
    ``image_pad``; text runs get ``arange`` on all three rows, continuing from the previous block's
    max + 1; an image block gets its (t, h, w) index on the merged grid (h/merge, w/merge) plus the
    position the text before it reached. A document with no such image (llava/plain templates) gets
    text positions on all rows, as HF does. ``image_grid_thw`` rows are in order of appearance.
    Raises ``ValueError`` when the images found and the grid rows disagree.
    """
    ids = np.asarray(input_ids).reshape(-1)
    n_tok = ids.shape[0]
    grid = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    m = int(spatial_merge_size)

    is_start = np.zeros(n_tok, dtype=bool)
    if n_tok > 1:
        is_start[:-1] = (ids[:-1] == vision_start_id) & (ids[1:] == image_pad_id)
    block_at = np.flatnonzero(is_start) + 1  # first pad of each image
    if block_at.size == 0:
        return np.broadcast_to(text_position_ids(n_tok), (3, n_tok)).copy()
    if block_at.size != grid.shape[0]:
        raise ValueError(f"{block_at.size} image(s) in the tokens (<|vision_start|><|image_pad|>) but "
                         f"{grid.shape[0]} row(s) in image_grid_thw")
    gt, gh, gw = grid[:, 0], grid[:, 1] // m, grid[:, 2] // m
    if np.any(grid[:, 1] % m) or np.any(grid[:, 2] % m) or np.any(grid <= 0):
        raise ValueError(f"image_grid_thw rows must be positive with h, w divisible by {m}: {grid.tolist()}")
    sizes = gt * gh * gw

    # Pad-run lengths must match the grid: a run ends at the first non-pad token.
    is_pad = ids == image_pad_id
    for k, (s, n) in enumerate(zip(block_at.tolist(), sizes.tolist())):
        e = s + n
        if e > n_tok or not is_pad[s:e].all() or (e < n_tok and is_pad[e]):
            raise ValueError(f"image {k} at token {s}: its <|image_pad|> run does not have the "
                             f"{n} tokens that grid {grid[k].tolist()} with merge {m} gives")

    pos = np.empty((3, n_tok), dtype=np.int64)
    prev_end, delta = 0, 0  # delta: position minus token index in the current text run
    for s, n, t, h, w in zip(block_at.tolist(), sizes.tolist(), gt.tolist(), gh.tolist(), gw.tolist()):
        pos[:, prev_end:s] = np.arange(prev_end + delta, s + delta, dtype=np.int64)
        base = s + delta
        hw = h * w
        pos[0, s:s + n] = base + np.repeat(np.arange(t, dtype=np.int64), hw)
        pos[1, s:s + n] = base + np.tile(np.repeat(np.arange(h, dtype=np.int64), w), t)
        pos[2, s:s + n] = base + np.tile(np.arange(w, dtype=np.int64), t * h)
        prev_end = s + n
        delta = base + max(t, h, w) - prev_end
    pos[:, prev_end:] = np.arange(prev_end + delta, n_tok + delta, dtype=np.int64)
    return pos


def mrope_position_ids_row(
    input_ids: np.ndarray,
    doc_lens: np.ndarray,
    doc_grids: list[np.ndarray],
    spatial_merge_size: int = 2,
    vision_start_id: int = QWEN_VISION_START_ID,
    image_pad_id: int = QWEN_IMAGE_PAD_ID,
) -> np.ndarray:
    """M-RoPE positions ``int64 [3, sum(doc_lens)]`` of a packed row: every document's
    :func:`mrope_position_ids` (each from 0), concatenated, computed with a fixed number of numpy
    passes over the whole row instead of a Python loop per document and image. ``doc_grids``: each
    document's ``[N_d, 3]`` grid rows. Anything the per-document function would refuse (or treat
    specially) is handed to it, so errors and results are the same (tested)."""
    ids = np.asarray(input_ids).reshape(-1)
    lens = np.asarray(doc_lens, dtype=np.int64)
    n, m = ids.shape[0], int(spatial_merge_size)
    starts = np.zeros(lens.shape[0], dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    doc_of = np.repeat(np.arange(lens.shape[0]), lens)
    local = np.arange(n, dtype=np.int64) - starts[doc_of]
    is_start = np.zeros(n, dtype=bool)
    if n > 1:
        is_start[:-1] = (ids[:-1] == vision_start_id) & (ids[1:] == image_pad_id)
        is_start[(starts + lens - 1)[lens > 0]] = False  # a pair never spans two documents
    block_at = np.flatnonzero(is_start) + 1
    grids = [np.asarray(g, dtype=np.int64).reshape(-1, 3) for g in doc_grids]
    grid = np.concatenate(grids) if grids else np.zeros((0, 3), np.int64)
    counts = np.bincount(doc_of[block_at], minlength=lens.shape[0])
    if not np.array_equal(counts, [g.shape[0] for g in grids]) or (grid.size and (
            np.any(grid <= 0) or np.any(grid[:, 1:] % m))):
        return _per_document(ids, lens, grids, m, vision_start_id, image_pad_id)
    gt, gh, gw = grid[:, 0], grid[:, 1] // m, grid[:, 2] // m
    sizes = gt * gh * gw
    ends = block_at + sizes
    is_pad = ids == image_pad_id
    first = np.repeat(block_at, sizes)
    tok = first + np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    doc_end = (starts + lens)[doc_of[block_at]]
    if np.any(ends > doc_end) or not is_pad[tok].all() or is_pad[ends[ends < doc_end]].any():
        return _per_document(ids, lens, grids, m, vision_start_id, image_pad_id)
    inc = np.zeros(n + 1, dtype=np.int64)
    inc[ends] = np.maximum(np.maximum(gt, gh), gw) - sizes  # a text run after a block jumps by max(t,h,w) - size
    run = np.cumsum(inc[:n])
    delta = run - run[starts[doc_of]]  # blocks ending at a document's start belong to the one before
    pos = np.broadcast_to(local + delta, (3, n)).copy()
    j = tok - first
    base = np.repeat(local[block_at] + delta[block_at], sizes)
    hw, w_r = np.repeat(gh * gw, sizes), np.repeat(gw, sizes)
    pos[0, tok] = base + j // hw
    pos[1, tok] = base + (j // w_r) % np.repeat(gh, sizes)
    pos[2, tok] = base + j % w_r
    return pos


def _per_document(ids, lens, grids, m, vision_start_id, image_pad_id) -> np.ndarray:
    out, at = [], 0
    for n, g in zip(lens.tolist(), grids):
        out.append(mrope_position_ids(ids[at:at + n], g, m, vision_start_id, image_pad_id))
        at += n
    return np.concatenate(out, axis=1) if out else np.zeros((3, 0), np.int64)
