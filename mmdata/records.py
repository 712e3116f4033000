"""The conversation record (CONTRACT s.1): normalise LLaVA / messages / instruction-output input into it,
and validate a record that claims to be one. Structure only: no file system, no images.

`normalize(raw, default_id, shape)` applies reject rules 1-5 of docs/clean-rules.md (malformed, bad_roles,
empty_turn, image_token_mismatch, text_too_long): a fast path for already-clean LLaVA records, else one
parser per input shape (`PARSERS`) and one shared tail of checks; it returns a `Normalized` tuple; image, id and duplicate rules are the clean stage's.
"""

from __future__ import annotations

import re
from functools import partial
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "Unrepresentable",
    "CHAT_ROLES",
    "DEFAULT_MAX_TEXT_CHARS",
    "IMAGE_TOKEN",
    "OUT_ROLES",
    "PARSERS",
    "REASONS",
    "ROLES",
    "Normalized",
    "Rejected",
    "Turns",
    "detect_shape",
    "json_type",
    "normalize",
    "record_images",
    "to_messages",
    "unsafe_path_reason",
    "validate_record",
]

from mmdata.text.tokens import IMAGE_TAG as IMAGE_TOKEN  # noqa: E402  (one spelling: mmdata.text.tokens)
from mmdata.text.tokens import CHAT_ROLES, OUT_ROLES, ROLES  # noqa: E402  (the role maps: one place, re-exported)

# The most characters a record's turns may hold (stripped values, system included): a 200 MB record
# passes JSON parsing but takes tens of GB to tokenise and pack; a book-length turn is ~1M characters.
DEFAULT_MAX_TEXT_CHARS = 1_000_000

# Reject codes in precedence order (docs/clean-rules.md); coco-only codes last.
REASONS = (
    "malformed",
    "bad_roles",
    "empty_turn",
    "image_token_mismatch",
    "text_too_long",
    "unsafe_path",
    "missing_image",
    "unreadable_image",
    "image_too_small",
    "bad_aspect_ratio",
    "duplicate_id",
    "duplicate_sample",
    "no_caption",
    "orphan_annotation",
)

_SEP = re.compile(r"[\\/]")

# Keys each input shape consumes (everything else is kept, in input order, after the conversation).
_LLAVA_KEYS = frozenset(("id", "image", "conversations"))
_MESSAGES_KEYS = frozenset(("id", "image", "images", "messages"))
_INSTRUCTION_KEYS = frozenset(("id", "image", "instruction", "input", "output"))


class Normalized(NamedTuple):
    """Outcome of `normalize`: ``code`` is None for a record that passed rules 1-4.

    ``record`` is the normalised output record (None when rejected); ``images`` its image paths in
    ``<image>`` order; ``id`` the output id (always a string); ``roles`` / ``values`` the turns that
    duplicate detection compares (a system turn first when there is one).
    """

    code: str | None
    detail: str
    id: str
    record: dict[str, Any] | None
    images: list[str]
    roles: list[str] | None
    values: list[str] | None


_new = partial(tuple.__new__, Normalized)  # C-level construction for the hot path

# Role sequences of already-clean records, by turn count: the fast path compares the whole list at once.
_ALTERNATING = {n: ["human", "gpt"] * (n // 2) for n in range(2, 202, 2)}


def json_type(x: Any) -> str:
    """The JSON name of a parsed value's type, for details (``null``, ``integer``, ``array``, ...)."""
    return "null" if x is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "array", dict: "object"}.get(type(x), type(x).__name__)


_type = json_type


class Unrepresentable(str):
    """A record that is valid JSON (RFC 8259 sets no limit on a number's digits) but holds a number the
    readers cannot represent (more digits than Python's int conversion or orjson take): kept as its
    text, so it is rejected as one record (``malformed``) and its reject holds it unchanged."""

    why: str
    rid: str | None

    def __new__(cls, text: str, why: str, rid: str | None = None) -> Unrepresentable:
        self = super().__new__(cls, text)
        self.why, self.rid = why, rid
        return self


def _reject(code: str, detail: str, rid: str) -> Normalized:
    return Normalized(code, detail, rid, None, [], None, None)


def _flatten_content(content: list[Any], images: list[str], where: str) -> str | Rejected:
    """A content list (``[{"type": "text"|"image"|"image_url", ...}]``) as one string; image items
    become ``<image>`` in place and their paths are appended to ``images``. Returns a
    `Rejected` when an item cannot be read."""
    parts: list[str] = []
    prev_text = False
    for k, item in enumerate(content):
        if not isinstance(item, dict):
            return Rejected("malformed", f"{where}: content[{k}] is {_type(item)}, expected an object")
        kind = item.get("type")
        if kind == "text":
            v = item.get("text", item.get("value"))
            if not isinstance(v, str):
                return Rejected("malformed", f"{where}: content[{k}] text item has no string 'text' or 'value'")
            if prev_text:
                parts.append("\n")
            parts.append(v)
            prev_text = True
        elif kind in ("image", "image_url"):
            v = item.get(kind, item.get("value", item.get("image", item.get("image_url", item.get("url")))))
            if isinstance(v, dict):  # OpenAI style {"image_url": {"url": ...}}
                v = v.get("url", v.get("path"))
            if not isinstance(v, str):
                return Rejected("malformed", f"{where}: content[{k}] {kind} item has no string path")
            images.append(v)
            parts.append(IMAGE_TOKEN)
            prev_text = False
        else:
            return Rejected("malformed", f"{where}: content[{k}] has type {item.get('type')!r}, expected text, image or image_url")
    return "".join(parts)


class Turns(NamedTuple):
    """What a shape parser read from one input record: images in ``<image>`` order, the turns as
    (input role, raw value) columns, and the input keys the parser consumed (the rest are kept)."""

    images: list[str]
    roles: list[str]
    values: list[str]
    consumed: frozenset[str]


class Rejected(NamedTuple):
    """A parser's refusal: a reason code and its detail."""

    code: str
    detail: str


def _image_list(im: Any, key: str) -> list[str] | Rejected:
    """``image`` / ``images`` as a list of paths (a string is one path, None none)."""
    if im is None:
        return []
    if type(im) is str:
        return [im]
    if type(im) is list:
        for k, p in enumerate(im):
            if type(p) is not str:
                return Rejected("malformed", f"{key}[{k}] is {_type(p)}, expected a string path")
        return list(im)
    return Rejected("malformed", f"{key} is {_type(im)}, expected a string or a list of strings")


def _turn_list(turns: Any, name: str, other: str, raw: dict[str, Any]) -> Rejected | None:
    """Why ``turns`` (the ``conversations`` / ``messages`` value) is not a non-empty list, or None."""
    if type(turns) is list and turns:
        return None
    if turns is None:
        extra = ""
        if name == "conversations" and "captions" in raw:
            extra = " (a captions record, not a conversation)"
        elif name == "conversations" and "text" in raw and "question_id" in raw:
            extra = " (an evaluation question, not a conversation)"
        return Rejected("malformed", f"no '{name}' (or '{other}') list{extra}")
    return Rejected("malformed", f"'{name}' is " + ("an empty list" if type(turns) is list else _type(turns))
                    + ", expected a non-empty list of turns")


def parse_llava(raw: dict[str, Any]) -> Turns | Rejected:
    """LLaVA / ShareGPT: ``image`` + ``conversations: [{from, value}]``."""
    images = _image_list(raw.get("image"), "image")
    if type(images) is Rejected:
        return images
    conv = raw.get("conversations")
    bad = _turn_list(conv, "conversations", "messages", raw)
    if bad is not None:
        return bad
    roles: list[str] = []
    values: list[str] = []
    for k, turn in enumerate(conv):
        if type(turn) is not dict:
            return Rejected("malformed", f"conversations[{k}] is {_type(turn)}, expected an object")
        r = turn.get("from")
        v = turn.get("value")
        if type(r) is not str or type(v) is not str:
            field, x = ("from", r) if type(r) is not str else ("value", v)
            what = "missing" if field not in turn else f"{_type(x)}, expected a string"
            return Rejected("malformed", f"conversations[{k}].{field} is {what}")
        roles.append(r)
        values.append(v)
    return Turns(images, roles, values, _LLAVA_KEYS)


def parse_messages(raw: dict[str, Any]) -> Turns | Rejected:
    """LLaMA-Factory / MindSpeed-MM: ``images`` (or ``image``) + ``messages: [{role, content}]``,
    content a string or a content list."""
    key = "images" if "images" in raw else "image"
    images = _image_list(raw.get(key), key)
    if type(images) is Rejected:
        return images
    msgs = raw.get("messages")
    bad = _turn_list(msgs, "messages", "conversations", raw)
    if bad is not None:
        return bad
    roles: list[str] = []
    values: list[str] = []
    for k, turn in enumerate(msgs):
        if type(turn) is not dict:
            return Rejected("malformed", f"messages[{k}] is {_type(turn)}, expected an object")
        r = turn.get("role")
        v = turn.get("content")
        if type(r) is not str:
            what = "missing" if "role" not in turn else f"{_type(r)}, expected a string"
            return Rejected("malformed", f"messages[{k}].role is {what}")
        if type(v) is not str:
            if type(v) is not list:
                what = "missing" if "content" not in turn else f"{_type(v)}, expected a string or a content list"
                return Rejected("malformed", f"messages[{k}].content is {what}")
            v = _flatten_content(v, images, f"messages[{k}]")
            if type(v) is Rejected:
                return v
        roles.append(r)
        values.append(v)
    return Turns(images, roles, values, _MESSAGES_KEYS)


def parse_instruction(raw: dict[str, Any]) -> Turns | Rejected:
    """Alpaca style ``instruction`` (+ ``input``) / ``output``: one human turn, one gpt turn."""
    images = _image_list(raw.get("image"), "image")
    if type(images) is Rejected:
        return images
    ins, out, inp = raw.get("instruction"), raw.get("output"), raw.get("input", "")
    for name, x in (("instruction", ins), ("output", out), ("input", inp)):
        if type(x) is not str:
            return Rejected("malformed", f"{name} is {_type(x)}, expected a string")
    q = ins.strip()
    if inp.strip():
        q = q + "\n" + inp.strip()
    if images and IMAGE_TOKEN not in q:  # LLaVA convention: the image(s) come before the question
        q = (IMAGE_TOKEN + "\n") * len(images) + q
    return Turns(images, ["human", "gpt"], [q, out], _INSTRUCTION_KEYS)


# One parser per input shape; `normalize` picks one per record ("auto") or is told which.
PARSERS: dict[str, Callable[[dict[str, Any]], Turns | Rejected]] = {
    "llava": parse_llava,
    "messages": parse_messages,
    "instruction": parse_instruction,
}


def detect_shape(raw: dict[str, Any]) -> str:
    """The input shape of one record: ``conversations`` -> llava, ``messages`` -> messages,
    ``instruction`` + ``output`` -> instruction, else llava (whose parser explains what is missing)."""
    if "conversations" in raw:
        return "llava"
    if "messages" in raw:
        return "messages"
    if "instruction" in raw and "output" in raw:
        return "instruction"
    return "llava"


def _record_id(raw: dict[str, Any], default_id: str) -> str | Rejected:
    rid = raw.get("id", default_id)
    t = type(rid)
    if t is str:
        return rid if rid.strip() else default_id  # an empty or white-space id counts as missing
    if t is int:
        return str(rid)
    return Rejected("malformed", f"id is {_type(rid)}, expected a string or an integer")


def normalize(raw: Any, default_id: str, shape: str = "auto",
              max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> Normalized:
    """Apply rules 1-5 to one input record and build its output form.

    ``shape``: "auto" (per record, see `detect_shape`), or one of `PARSERS` (forced).
    ``default_id`` is used when the record has no ``id``, or an empty or white-space-only one; any
    other string id is kept verbatim. ``max_text_chars``: rule 5 (text_too_long).
    """
    if type(raw) is dict and shape != "messages" and "conversations" in raw:
        fast = _fast_llava(raw, default_id, max_text_chars)
        if fast is not None:
            return fast
    if type(raw) is Unrepresentable:
        return _reject("malformed", raw.why, raw.rid or default_id)
    if not isinstance(raw, dict):
        return _reject("malformed", f"record is {_type(raw)}, expected an object", default_id)
    rid = _record_id(raw, default_id)
    if type(rid) is Rejected:
        return _reject(rid.code, rid.detail, default_id)
    turns = PARSERS[detect_shape(raw) if shape == "auto" else shape](raw)
    if type(turns) is Rejected:
        return _reject(turns.code, turns.detail, rid)
    return _check_turns(raw, rid, turns, max_text_chars)


def _split_system(roles: list[str], values: list[str]) -> tuple[str | None, list[str], list[str]]:
    """A leading system turn apart from the human/gpt turns."""
    if roles[0] == "system":
        return values[0], roles[1:], values[1:]
    return None, roles, values


def _role_problem(roles: list[str], offset: int) -> str | None:
    """Rule 2 on the turns after a system turn: why they are not human/gpt alternating, or None."""
    n = len(roles)
    if n == 0:
        return "only a system turn, no human/gpt turns"
    for k in range(n):
        r = ROLES.get(roles[k])
        want = "human" if k % 2 == 0 else "gpt"
        if r != want:
            if r is None:
                return f"turn {k + offset} has role {roles[k]!r}" + (" (a system turn must come first)" if roles[k] == "system" else "")
            return f"turn {k + offset} is {r}, expected {want} (turns must alternate human/gpt starting with human)"
    if n % 2:
        return f"the last turn ({n - 1 + offset}) is an unanswered human turn"
    return None


def _token_problem(stripped: list[str], system: str | None, nimages: int, offset: int) -> str | None:
    """Rule 4: why the ``<image>`` tokens do not match the images, or None."""
    n = len(stripped)
    ntok = 0
    for k in range(0, n, 2):
        ntok += stripped[k].count(IMAGE_TOKEN)
    for k in range(1, n, 2):
        if IMAGE_TOKEN in stripped[k]:
            return f"<image> in a gpt turn (turn {k + offset})"
    if ntok != nimages:
        return f"{ntok} <image> token(s) in human turns, {nimages} image(s)"
    if system is not None and IMAGE_TOKEN in system:
        return "<image> in the system turn"
    return None


def _check_turns(raw: dict[str, Any], rid: str, turns: Turns, max_text_chars: int) -> Normalized:
    """The shared tail: rules 2-5 on parsed turns, then the output record."""
    system, roles, values = _split_system(turns.roles, turns.values)
    offset = int(system is not None)
    why = _role_problem(roles, offset)
    if why is not None:
        return _reject("bad_roles", why, rid)
    if system is not None:
        system = system.strip()
        if not system:
            return _reject("empty_turn", "the system turn is empty", rid)
    out_roles = [ROLES[r] for r in roles]
    stripped = [v.strip() for v in values]
    for k, v in enumerate(stripped):
        if not v:
            return _reject("empty_turn", f"turn {k + offset} ({out_roles[k]}) is empty", rid)
    why = _token_problem(stripped, system, len(turns.images), offset)
    if why is not None:
        return _reject("image_token_mismatch", why, rid)
    chars = sum(map(len, stripped)) + (len(system) if system is not None else 0)
    if chars > max_text_chars:
        return _reject("text_too_long", f"{chars:,} characters of text, more than {max_text_chars:,}", rid)
    images = turns.images
    rec: dict[str, Any] = {"id": rid}
    if images:
        rec["image"] = images[0] if len(images) == 1 else images
    if system is not None:
        rec["system"] = system
    rec["conversations"] = [{"from": r, "value": v} for r, v in zip(out_roles, stripped)]
    skip = turns.consumed
    for k, v in raw.items():
        if k not in skip and k not in rec:
            rec[k] = v
    if system is not None:
        return Normalized(None, "", rid, rec, images, ["system", *out_roles], [system, *stripped])
    return Normalized(None, "", rid, rec, images, out_roles, stripped)


def _fast_llava(raw: dict[str, Any], default_id: str, max_text_chars: int) -> Normalized | None:
    """The common case in a few C-level list operations: a LLaVA record whose turns already alternate
    human/gpt, with string values, non-empty after stripping and matching ``<image>`` counts.
    Returns None for anything else, and the general path decides (and explains) it."""
    conv = raw["conversations"]
    if type(conv) is not list:
        return None
    try:
        roles = [t["from"] for t in conv]
        values = [t["value"].strip() for t in conv]
    except (TypeError, KeyError, AttributeError):
        return None
    if roles != _ALTERNATING.get(len(roles)) or not all(values):
        return None
    text = "\0".join(values)  # one string for the length and the <image> scans
    if len(text) - len(values) + 1 > max_text_chars:
        return None
    rid = raw.get("id", default_id)
    if type(rid) is not str:
        if type(rid) is not int:
            return None
        rid = str(rid)
    elif not rid.strip():
        rid = default_id  # an empty or white-space id counts as missing
    im = raw.get("image")
    if im is None:
        images: list[str] = []
    elif type(im) is str:
        images = [im]
    elif type(im) is list and all(type(p) is str for p in im):
        images = im
    else:
        return None
    if images:
        if text.count(IMAGE_TOKEN) != len(images) or IMAGE_TOKEN in "\0".join(values[1::2]):
            return None  # (all in the human turns when none is in a gpt turn)
    elif IMAGE_TOKEN in text:  # text-only: one scan
        return None
    rec: dict[str, Any] = {"id": rid}
    if images:
        rec["image"] = images[0] if len(images) == 1 else list(images)
    rec["conversations"] = [{"from": r, "value": v} for r, v in zip(roles, values)]
    if len(raw) > 1 + ("id" in raw) + ("image" in raw):  # keys other than id, image, conversations
        for k, v in raw.items():
            if k not in _LLAVA_KEYS:
                rec[k] = v
    return _new((None, "", rid, rec, list(images), roles, values))


def unsafe_path_reason(p: str) -> str | None:
    """Why an image path is unsafe on its face (empty, absolute, a ``..`` component, a trailing
    separator: ``a.jpg/`` would open ``a.jpg`` on some systems and fail on others), else None.

    Symlinks that leave the root are caught later, on the real file system.
    """
    if not p:
        return "empty image path"
    if "\x00" in p:
        return f"{p!r}: NUL byte in the path"
    if p[0] in "/\\" or (len(p) > 1 and p[1] == ":" and p[0].isalpha()):
        return f"{p}: absolute path"
    parts = _SEP.split(p)
    if ".." in parts:
        return f"{p}: '..' component"
    if not parts[-1]:
        return f"{p}: ends with a path separator (names a folder, not an image file)"
    return None


def record_images(rec: dict[str, Any]) -> list[str]:
    """The image paths of a clean record in ``<image>`` order ([] for text-only)."""
    im = rec.get("image")
    if im is None:
        return []
    return [im] if isinstance(im, str) else list(im)


def to_messages(rec: dict[str, Any]) -> dict[str, Any]:
    """A clean record in the messages shape of LLaMA-Factory / MindSpeed-MM:
    ``{"id", "messages": [{"role", "content"}], "images": [...]}``, other keys kept after."""
    msgs = []
    if "system" in rec:
        msgs.append({"role": "system", "content": rec["system"]})
    for t in rec["conversations"]:
        msgs.append({"role": OUT_ROLES[t["from"]], "content": t["value"]})
    out: dict[str, Any] = {"id": rec["id"], "messages": msgs, "images": record_images(rec)}
    for k, v in rec.items():
        if k not in ("id", "image", "system", "conversations"):
            out[k] = v
    return out


def validate_record(rec: Any) -> list[tuple[str, str]]:
    """Problems of a record that should already be clean (CONTRACT s.1), as (reason code, detail).

    Empty when it is valid. Used by shard and inspect on clean output; stricter than `normalize`:
    the id must be a string, roles must already be human/gpt and values already stripped.
    """
    res = normalize(rec, "", "llava")
    if res.code is not None:
        return [(res.code, res.detail)]
    problems: list[tuple[str, str]] = []
    if not isinstance(rec.get("id"), str) or not rec["id"].strip():
        problems.append(("malformed", "id missing or not a non-empty string"))
    for k, t in enumerate(rec["conversations"]):
        if t["from"] not in ("human", "gpt", "system"):
            problems.append(("bad_roles", f"turn {k} has input role {t['from']!r}; clean records use human/gpt"))
        elif t["from"] == "system":
            problems.append(("bad_roles", f"turn {k} is a system turn; clean records keep it under 'system'"))
        if t["value"] != t["value"].strip():
            problems.append(("malformed", f"turn {k} value has outer white space"))
    im = rec.get("image")
    if isinstance(im, list) and len(im) < 2:
        problems.append(("malformed", "image list with fewer than two paths (one image is a string, none is absent)"))
    for p in record_images(rec):
        why = unsafe_path_reason(p)
        if why:
            problems.append(("unsafe_path", why))
    return problems
