"""Chat templates: a shard record -> token ids + loss labels, each ``<image>`` expanded to its tokens.

Templates: ``qwen2vl`` (ChatML as Qwen2-VL renders it), ``llava_v1`` (Vicuna v1 conversation) and
``plain`` (LLaVA pretraining: image + caption). Text segments are tokenized in one ``encode_batch``
call and the image pad ids are spliced in with numpy, so the cost does not grow with image size.
Rules and a rendered example of each: ``docs/loader-text.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from dataclasses import dataclass

import numpy as np

from mmdata.errors import InputError, MMDataError
from mmdata.text.tokens import CHAT_ROLES
from mmdata.text.tokenizer import TextTokenizer
from mmdata.text.tokens import (
    IM_END,
    IM_START,
    IMAGE_PAD,
    IMAGE_TAG,
    VISION_END,
    VISION_START,
)

IGNORE = -100
QWEN_SYSTEM = "You are a helpful assistant."
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")


class TemplateError(MMDataError):
    """A record the template cannot turn into a trainable sample; the loader counts and skips it."""

    def __init__(self, sample_id: str | None, reason: str, detail: str):
        self.sample_id = sample_id
        self.reason = reason
        self.detail = detail
        super().__init__(f"sample {sample_id!r}: {reason}: {detail}")


@dataclass
class Encoded:
    """One document: ``input_ids`` and ``labels`` (int32 [L], -100 = no loss), and its image count."""

    input_ids: np.ndarray
    labels: np.ndarray
    n_images: int


@dataclass
class _Rendered:
    """Template output before tokenization: text segments, which are labelled, and image slots.

    Image ``i`` goes right after text segment ``image_after[i]`` (several images may share a slot).
    """

    texts: list[str]
    labelled: list[bool]
    image_after: list[int]


class _Builder:
    """Accumulates a template's text into as few segments as the label and image boundaries allow."""

    def __init__(self) -> None:
        self.texts: list[str] = [""]
        self.labelled: list[bool] = [False]
        self.image_after: list[int] = []

    def text(self, s: str, labelled: bool = False) -> None:
        if self.labelled[-1] == labelled and (not self.image_after or self.image_after[-1] != len(self.texts) - 1):
            self.texts[-1] += s  # merge with the open segment: one encode call fewer
        else:
            self.texts.append(s)
            self.labelled.append(labelled)

    def image(self) -> None:
        self.image_after.append(len(self.texts) - 1)

    def text_with_images(self, s: str, before: str = "", after: str = "") -> None:
        """Unlabelled ``s`` with each ``<image>`` replaced by an image slot wrapped in before/after."""
        parts = s.split(IMAGE_TAG)
        self.text(parts[0])
        for p in parts[1:]:
            self.text(before)
            self.image()
            self.text(after + p)

    def done(self) -> _Rendered:
        return _Rendered(self.texts, self.labelled, self.image_after)


def _turns(record: dict) -> tuple[str | None, list[tuple[str, str]]]:
    """(system or None, [(user|assistant, value)]) from ``conversations`` (from/value) or ``messages``."""
    sid = _sid(record)
    if not isinstance(record, dict):
        raise TemplateError(sid, "bad_turns", "the record is not a JSON object")
    conv = record.get("conversations")
    keys = ("from", "value")
    if conv is None and isinstance(record.get("messages"), list):
        conv, keys = record["messages"], ("role", "content")
    if not isinstance(conv, list) or not conv:
        raise TemplateError(sid, "bad_turns", "no 'conversations' list")
    system = record.get("system") if isinstance(record.get("system"), str) else None
    turns: list[tuple[str, str]] = []
    for i, t in enumerate(conv):
        raw = t.get(keys[0]) if isinstance(t, dict) else None
        role = CHAT_ROLES.get(raw) if isinstance(raw, str) else None
        value = t.get(keys[1]) if isinstance(t, dict) else None
        if role is None or not isinstance(value, str):
            raise TemplateError(sid, "bad_turns", f"turn {i} has no known role or no string value")
        if role == "system":
            if i != 0:
                raise TemplateError(sid, "bad_turns", f"turn {i}: a system turn may only come first")
            system = value
            continue
        turns.append((role, value))
    return system, turns


def _sid(record: dict) -> str | None:
    v = record.get("id") if isinstance(record, dict) else None
    return None if v is None else str(v)


def _render_qwen2vl(sid: str | None, system: str | None, turns: list[tuple[str, str]], b: _Builder) -> None:
    """ChatML as Qwen2-VL's chat template writes it; each image wrapped in vision start/end."""
    b.text(f"{IM_START}system\n{QWEN_SYSTEM if system is None else system}{IM_END}\n")
    for role, value in turns:
        if role == "user":
            b.text(f"{IM_START}user\n")
            b.text_with_images(value, before=VISION_START, after=VISION_END)
            b.text(f"{IM_END}\n")
        else:
            b.text(f"{IM_START}assistant\n")
            b.text(f"{value}{IM_END}\n", labelled=True)


def _render_llava_v1(sid: str | None, system: str | None, turns: list[tuple[str, str]], b: _Builder) -> None:
    """Vicuna v1 conversation (LLaVA-1.5 fine-tuning)."""
    b.text(f"{LLAVA_V1_SYSTEM if system is None else system} ")
    for role, value in turns:
        if role == "user":
            b.text("USER: ")
            b.text_with_images(value)
            b.text(" ASSISTANT:")
        else:
            b.text(f" {value}</s>", labelled=True)


def _render_plain(sid: str | None, system: str | None, turns: list[tuple[str, str]], b: _Builder) -> None:
    """LLaVA pretraining: the images, then the caption."""
    if len(turns) != 2 or turns[0][0] != "user" or turns[1][0] != "assistant":
        raise TemplateError(sid, "bad_turns", "the plain template needs exactly one human and one gpt turn")
    for _ in range(turns[0][1].count(IMAGE_TAG)):
        b.image()
    b.text(f"{turns[1][1]}\n", labelled=True)


@dataclass(frozen=True)
class ChatTemplate:
    """One chat template: how it renders turns, the tokens it writes, and what each image becomes.

    ``needs``: tokens the tokenizer must know (checked on every record). ``placeholder``: the token
    each image expands into (None: the tokenizer's own, ``<|image_pad|>`` else ``<image>``).
    ``brackets``: tokens around every image, counted after tokenization; their presence is what
    Qwen2-VL's M-RoPE indexes (``mrope``).
    """

    name: str
    render: Callable[[str | None, str | None, list[tuple[str, str]], _Builder], None]
    needs: tuple[str, ...] = ()
    placeholder: str | None = None
    brackets: tuple[str, str] | None = None

    @property
    def mrope(self) -> bool:
        """Whether its image blocks carry the vision-start marker M-RoPE positions are keyed on."""
        return self.brackets is not None


CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    "qwen2vl": ChatTemplate("qwen2vl", _render_qwen2vl, needs=(IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD),
                            placeholder=IMAGE_PAD, brackets=(VISION_START, VISION_END)),
    "llava_v1": ChatTemplate("llava_v1", _render_llava_v1),
    "plain": ChatTemplate("plain", _render_plain),
}
TEMPLATES = tuple(CHAT_TEMPLATES)


def get_template(name: str | ChatTemplate) -> ChatTemplate:
    """The template called ``name``; ``InputError`` lists the known ones."""
    if isinstance(name, ChatTemplate):
        return name
    t = CHAT_TEMPLATES.get(name)
    if t is None:
        raise InputError(None, f"unknown chat template {name!r} (choose from {', '.join(TEMPLATES)})")
    return t


def _render(record: dict, template: str | ChatTemplate) -> _Rendered:
    system, turns = _turns(record)
    for role, value in turns:
        if role == "assistant" and IMAGE_TAG in value:
            raise TemplateError(_sid(record), "bad_turns", "<image> in a gpt turn")
    b = _Builder()
    get_template(template).render(_sid(record), system, turns, b)
    return b.done()


def _placeholder_id(tokenizer: TextTokenizer, t: ChatTemplate, n_images: int) -> int | None:
    """The id each image expands into; the tokenizer must know the tokens the template writes."""
    if t.needs:
        missing = [s for s in t.needs if tokenizer.special_id(s) is None]
        if missing:
            raise InputError(tokenizer.path, f"tokenizer lacks {', '.join(missing)}, which the {t.name} template needs")
    if t.placeholder is not None:
        return tokenizer.special_id(t.placeholder)
    pid = tokenizer.image_placeholder_id
    if pid is None and n_images:
        raise InputError(tokenizer.path, f"tokenizer has neither <|image_pad|> nor <image> for the {t.name} template")
    return pid


def encode_conversation(record: dict, tokenizer: TextTokenizer, template: str | ChatTemplate, image_tokens: list[int]) -> Encoded:
    """Render ``record`` with ``template`` and tokenize it; image ``i`` becomes ``image_tokens[i]`` pad ids.

    Labels are the token ids on assistant answers and their end token (qwen2vl: ``<|im_end|>`` and the
    newline after it; llava_v1: ``</s>``; plain: the caption and its newline), -100 elsewhere; the first
    token is always -100. Raises ``TemplateError`` on an image count or image-token mismatch, or when no
    token carries a label.
    """
    t = get_template(template)
    r = _render(record, t)
    sid = _sid(record)
    n = len(r.image_after)
    ks = np.asarray(image_tokens, dtype=np.int64).reshape(-1)
    if n != len(ks):
        raise TemplateError(sid, "image_count_mismatch", f"{n} <image> in the text but {len(ks)} image(s) in the sample")
    if n and ks.min() < 1:
        raise TemplateError(sid, "image_token_mismatch", f"image token counts must be >= 1, got {ks.tolist()}")
    pad = _placeholder_id(tokenizer, t, n)

    ids, labels = _assemble(tokenizer.encode_batch(r.texts), r, ks, pad)

    if pad is not None:
        got = int(np.count_nonzero(ids == pad))
        if got != int(ks.sum()):
            raise TemplateError(sid, "image_token_mismatch",
                                f"{got} image pad tokens after tokenization, expected {int(ks.sum())} "
                                f"(image_tokens={ks.tolist()}; is a pad token written literally in the text?)")
    if t.brackets is not None:
        starts = int(np.count_nonzero(ids == tokenizer.special_id(t.brackets[0])))
        ends_ = int(np.count_nonzero(ids == tokenizer.special_id(t.brackets[1])))
        if starts != n or ends_ != n:
            raise TemplateError(sid, "image_token_mismatch",
                                f"{starts} {t.brackets[0]} / {ends_} {t.brackets[1]} tokens for {n} image(s)")
    if len(labels):
        labels[0] = IGNORE
    if not np.any(labels != IGNORE):
        raise TemplateError(sid, "no_labels", "no assistant token is left to train on")
    return Encoded(input_ids=ids.astype(np.int32, copy=False), labels=labels, n_images=n)


def _assemble(seg_ids: list[list[int]], r: _Rendered, ks: np.ndarray, pad: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) int32: the segments' ids back to back, ``ks[i]`` pad ids after segment ``r.image_after[i]``;
    labels are the ids on labelled segments, -100 elsewhere and on the pads. One scatter, no per-token Python."""
    lengths = np.fromiter(map(len, seg_ids), dtype=np.int64, count=len(seg_ids))
    n_text = int(lengths.sum())
    text = np.fromiter(chain.from_iterable(seg_ids), dtype=np.int32, count=n_text)
    labelled = np.repeat(np.asarray(r.labelled, dtype=bool), lengths)
    if not len(ks):
        return text, np.where(labelled, text, np.int32(IGNORE)).astype(np.int32, copy=False)
    ends = np.cumsum(lengths)[np.asarray(r.image_after, dtype=np.int64)]  # text offset each image goes before
    shift = np.cumsum(np.bincount(ends, weights=ks, minlength=n_text + 1).astype(np.int64))[:n_text]
    dest = np.arange(n_text, dtype=np.int64) + shift  # where each text token lands once the pads are in
    ids = np.full(n_text + int(ks.sum()), pad if pad is not None else 0, dtype=np.int32)
    labels = np.full(len(ids), IGNORE, dtype=np.int32)
    ids[dest] = text
    labels[dest[labelled]] = text[labelled]
    return ids, labels


def text_token_count(record: dict, tokenizer: TextTokenizer, template: str) -> int:
    """Tokens of the rendered record without the image pads (pads = the images' own token counts)."""
    r = _render(record, template)
    return sum(len(x) for x in tokenizer.encode_batch(r.texts))


def text_token_counts(records: list[dict], tokenizer: TextTokenizer, template: str) -> np.ndarray:
    """``text_token_count`` of many records in one tokenizer call (int32); -1 where a record cannot render."""
    template = get_template(template)
    texts: list[str] = []
    owner: list[int] = []
    out = np.full(len(records), -1, dtype=np.int32)
    for i, rec in enumerate(records):
        try:
            r = _render(rec, template)
        except TemplateError:
            continue
        texts.extend(r.texts)
        owner.extend([i] * len(r.texts))
        out[i] = 0
    if texts:
        lens = np.fromiter((len(x) for x in tokenizer.encode_batch(texts)), dtype=np.int64, count=len(texts))
        np.add.at(out, np.asarray(owner, dtype=np.int64), lens.astype(np.int32))
    return out
