"""The tar layout of one sample (``sample_members``): the format room's one definition of which members
a sample has, in which order. Writing shards (job boundaries, parts, names) is ``mmdata.shard``'s.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["WritableSample", "sample_members"]


class WritableSample(Protocol):
    """What the writer needs of a sample (``mmdata.shard.sample.Sample`` has it)."""

    json: bytes
    ids: bytes | None
    images: list[bytes]
    id: str
    image_tokens: list[int]
    widths: list[int]
    heights: list[int]
    text_chars: int
    n_turns: int
    source: str
    text_tokens: int | None
    passthrough: int


def sample_members(key: str, s: WritableSample) -> list[tuple[str, bytes]]:
    """The tar layout of one sample: ``key.json``, then ``key.ids.npy`` (pre-tokenised), then the
    images as ``key.jpg`` (one) or ``key.0.jpg``, ``key.1.jpg``, ... (several)."""
    members = [(f"{key}.json", s.json)]
    if s.ids is not None:
        members.append((f"{key}.ids.npy", s.ids))
    if len(s.images) == 1:
        members.append((f"{key}.jpg", s.images[0]))
    else:
        members += [(f"{key}.{i}.jpg", d) for i, d in enumerate(s.images)]
    return members
