"""The special-token strings every stage spells the same way, and the text measure the index keeps.

``IMAGE_TAG`` is where an image sits in a record's text (LLaVA's ``<image>``); the ChatML and Qwen2-VL
vision tokens are what the qwen2vl chat template writes and the tokenizer must know.
"""

from __future__ import annotations

from collections.abc import Iterable

IMAGE_TAG = "<image>"
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# Input role -> clean role (CONTRACT s.1), and clean role -> the messages shape's role.
ROLES = {"human": "human", "gpt": "gpt", "user": "human", "assistant": "gpt"}
OUT_ROLES = {"human": "user", "gpt": "assistant"}
# Input role -> chat-template role (what a tokenizer's chat template calls it), system included.
CHAT_ROLES = {**{r: OUT_ROLES[c] for r, c in ROLES.items()}, "system": "system"}


def text_chars(values: Iterable[str]) -> int:
    """Characters of the turn values with every ``<image>`` removed (the index's ``text_chars``)."""
    return sum(len(v.replace(IMAGE_TAG, "")) for v in values)
