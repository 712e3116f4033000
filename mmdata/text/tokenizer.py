"""Load a local Hugging Face fast tokenizer (``tokenizer.json``) with the ``tokenizers`` library.

No transformers and no network: a file or a tokenizer directory on disk, or the small byte-level BPE
shipped in ``mmdata/assets/`` (built by ``fixtures/make_tokenizer.py``) when no path is given.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmdata.errors import InputError
from mmdata.text.tokens import (ENDOFTEXT, IM_END, IM_START, IMAGE_PAD, IMAGE_TAG, VIDEO_PAD, VISION_END,
                                VISION_START)

ASSET = Path(__file__).resolve().parents[1] / "assets" / "tokenizer.json"

# Pad token candidates when the tokenizer's own config names none (Qwen2 pads with <|endoftext|>).
_PAD_FALLBACKS = (ENDOFTEXT, "<pad>", "[PAD]", "<unk>", "</s>")


@dataclass
class TextTokenizer:
    """A fast tokenizer plus the special-token ids the templates, the packer and M-RoPE need.

    ``encode`` never inserts special tokens; special tokens written literally in the text are
    recognised (``"<|im_start|>"`` -> one id). Ids of tokens the vocabulary lacks are ``None``.
    """

    tokenizer: Any = field(repr=False)
    path: str
    sha256: str
    vocab_size: int
    pad_id: int
    endoftext_id: int | None = None
    im_start_id: int | None = None
    im_end_id: int | None = None
    vision_start_id: int | None = None
    vision_end_id: int | None = None
    image_pad_id: int | None = None
    video_pad_id: int | None = None
    image_token_id: int | None = None  # LLaVA's "<image>"
    _special: dict[str, int | None] = field(default_factory=dict, repr=False, compare=False)
    # The same tokenizer without its normalizer, used for ASCII-only text when that normalizer is
    # Unicode normal-form composition (NFC/NFD/NFKC/NFKD: the identity on ASCII), so the ids are the same
    # and the normalising pass (~9% of encode time) is skipped. None: always use ``tokenizer``.
    ascii_tokenizer: Any = field(default=None, repr=False, compare=False)

    def _for(self, texts) -> Any:
        t = self.ascii_tokenizer
        return t if t is not None and all(s.isascii() for s in texts) else self.tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no BOS/EOS added."""
        return self._for((text,)).encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` over many texts in one call (Rust side; no offsets computed when the library allows)."""
        tok = self._for(texts)
        fn = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
        return [e.ids for e in fn(texts if isinstance(texts, list) else list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (a list or an integer array); special tokens kept unless asked."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def special_id(self, token: str) -> int | None:
        """``token_id`` remembered per token (the templates ask for the same few on every record)."""
        try:
            return self._special[token]
        except KeyError:
            tid = self._special[token] = self.token_id(token)
            return tid

    def token_id(self, token: str) -> int | None:
        """Id of one vocabulary entry (e.g. ``"<|image_pad|>"``), ``None`` when absent."""
        return self.tokenizer.token_to_id(token)

    @property
    def image_placeholder_id(self) -> int | None:
        """The id an image is expanded into: ``<|image_pad|>``, else LLaVA's ``<image>``."""
        return self.image_pad_id if self.image_pad_id is not None else self.image_token_id


def _resolve(path: str | Path | None) -> Path:
    if path is None:
        if not ASSET.is_file():
            raise InputError(ASSET, "the shipped tokenizer is missing (rebuild it: python -m fixtures.make_tokenizer)")
        return ASSET
    p = Path(path).expanduser()
    if p.is_dir():
        f = p / "tokenizer.json"
        if not f.is_file():
            raise InputError(p, "no tokenizer.json in this directory (a Hugging Face *fast* tokenizer is needed; "
                                "convert with transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))")
        return f
    if not p.exists():
        raise InputError(p, "tokenizer not found (give a tokenizer.json file or a directory holding one)")
    return p


def _config_pad(tok_file: Path, tok) -> int | None:
    """Pad id named by ``tokenizer_config.json`` / ``special_tokens_map.json`` beside the file, if any."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = tok_file.parent / name
        if not cfg.is_file():
            continue
        try:
            pad = json.loads(cfg.read_text(encoding="utf-8")).get("pad_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str) and tok.token_to_id(pad) is not None:
            return tok.token_to_id(pad)
    return None


_ASCII_IDENTITY_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD"})


def _without_ascii_identity_normalizer(tok, spec: dict) -> Any:
    """A copy of ``tok`` with no normalizer when its normalizer only applies Unicode normal forms (which
    leave ASCII text unchanged), else None."""
    norm = spec.get("normalizer")
    if not isinstance(norm, dict):
        return None
    parts = norm.get("normalizers") if norm.get("type") == "Sequence" else [norm]
    if not parts or not all(isinstance(p, dict) and p.get("type") in _ASCII_IDENTITY_NORMALIZERS for p in parts):
        return None
    from tokenizers import Tokenizer

    fast = Tokenizer.from_str(tok.to_str())
    fast.normalizer = None
    return fast


def load_tokenizer(path: str | Path | None = None) -> TextTokenizer:
    """Load ``path`` (a tokenizer.json or a directory holding one); ``None`` = the shipped tokenizer.

    Raises ``InputError`` naming the path when it is missing or not a Hugging Face tokenizer.
    """
    from tokenizers import Tokenizer

    f = _resolve(path)
    try:
        data = f.read_bytes()
    except OSError as e:
        raise InputError(f, f"cannot read tokenizer: {e.strerror or e}") from None
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON / bad schema
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f, f"not a Hugging Face tokenizer.json: {first}") from None

    try:
        ascii_tok = _without_ascii_identity_normalizer(tok, json.loads(data))
    except ValueError:
        ascii_tok = None

    def tid(s: str) -> int | None:
        return tok.token_to_id(s)

    pad = _config_pad(f, tok)
    if pad is None and tok.padding is not None:
        pad = tok.padding.get("pad_id")
    if pad is None:
        pad = next((tid(s) for s in _PAD_FALLBACKS if tid(s) is not None), 0)
    return TextTokenizer(
        tokenizer=tok,
        path=str(f),
        sha256=hashlib.sha256(data).hexdigest(),
        # one past the largest id: the embedding rows a model needs, even when the ids have holes
        vocab_size=max(tok.get_vocab_size(with_added_tokens=True),
                       max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1),
        pad_id=int(pad),
        endoftext_id=tid(ENDOFTEXT),
        im_start_id=tid(IM_START),
        im_end_id=tid(IM_END),
        vision_start_id=tid(VISION_START),
        vision_end_id=tid(VISION_END),
        image_pad_id=tid(IMAGE_PAD),
        video_pad_id=tid(VIDEO_PAD),
        image_token_id=tid(IMAGE_TAG),
        ascii_tokenizer=ascii_tok,
    )
