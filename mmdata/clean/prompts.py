"""Short-description prompts for COCO captions, chosen per image by a stable hash of its file stem."""

from __future__ import annotations

import zlib
from pathlib import Path

from mmdata.errors import InputError
from mmdata.records import IMAGE_TOKEN

__all__ = ["DEFAULT_PROMPTS", "load_prompts", "prompt_for"]

# The "brief description" instructions of LLaVA (Liu et al. 2023, Table 8), used for its caption data.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)


def load_prompts(path: str | Path) -> tuple[str, ...]:
    """One prompt per line (stripped; blank lines skipped). A prompt may not hold ``<image>``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read prompts: {e}") from None
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if IMAGE_TOKEN in s:
            raise InputError(path, "a prompt may not contain <image> (it is added in front)", n, line.index(IMAGE_TOKEN) + 1)
        prompts.append(s)
    if not prompts:
        raise InputError(path, "no prompts (one per line expected)")
    return tuple(prompts)


def prompt_for(stem: str, prompts: tuple[str, ...] | list[str] = DEFAULT_PROMPTS) -> str:
    """The human turn for an image: ``<image>\\n`` + ``prompts[crc32(stem) % len(prompts)]``."""
    return IMAGE_TOKEN + "\n" + prompts[zlib.crc32(stem.encode("utf-8")) % len(prompts)]
