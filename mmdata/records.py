"""The conversation record (CONTRACT s.1): normalise LLaVA / messages / instruction-output input into it,
and validate a record that claims to be one. Structure only: no file system, no images.

`normalize(raw, default_id, shape)` applies reject rules 1-4 of docs/clean-rules.md (malformed, bad_roles,
empty_turn, image_token_mismatch) in one pass without per-field helper calls (it runs 100k+ times a second)
and returns a `Normalized` tuple; image, id and duplicate rules are the clean stage's.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any, NamedTuple

__all__ = [
    "IMAGE_TOKEN",
    "REASONS",
    "Normalized",
    "normalize",
    "record_images",
    "to_messages",
    "unsafe_path_reason",
    "validate_record",
]

from mmdata.text.tokens import IMAGE_TAG as IMAGE_TOKEN  # noqa: E402  (one spelling: mmdata.text.tokens)

# Reject codes in precedence order (docs/clean-rules.md); coco-only codes last.
REASONS = (
    "malformed",
    "bad_roles",
    "empty_turn",
    "image_token_mismatch",
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

_ROLE = {"human": "human", "gpt": "gpt", "user": "human", "assistant": "gpt"}
_OUT_ROLE = {"human": "user", "gpt": "assistant"}
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


def _type(x: Any) -> str:
    return "null" if x is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "array", dict: "object"}.get(type(x), type(x).__name__)


def _reject(code: str, detail: str, rid: str) -> Normalized:
    return Normalized(code, detail, rid, None, [], None, None)


def _flatten_content(content: list[Any], images: list[str], where: str) -> str | tuple[str, str]:
    """A content list (``[{"type": "text"|"image"|"image_url", ...}]``) as one string; image items
    become ``<image>`` in place and their paths are appended to ``images``. Returns a
    ("malformed", detail) tuple when an item cannot be read."""
    parts: list[str] = []
    prev_text = False
    for k, item in enumerate(content):
        if not isinstance(item, dict):
            return ("malformed", f"{where}: content[{k}] is {_type(item)}, expected an object")
        kind = item.get("type")
        if kind == "text":
            v = item.get("text", item.get("value"))
            if not isinstance(v, str):
                return ("malformed", f"{where}: content[{k}] text item has no string 'text' or 'value'")
            if prev_text:
                parts.append("\n")
            parts.append(v)
            prev_text = True
        elif kind in ("image", "image_url"):
            v = item.get(kind, item.get("value", item.get("image", item.get("image_url", item.get("url")))))
            if isinstance(v, dict):  # OpenAI style {"image_url": {"url": ...}}
                v = v.get("url", v.get("path"))
            if not isinstance(v, str):
                return ("malformed", f"{where}: content[{k}] {kind} item has no string path")
            images.append(v)
            parts.append(IMAGE_TOKEN)
            prev_text = False
        else:
            return ("malformed", f"{where}: content[{k}] has type {item.get('type')!r}, expected text, image or image_url")
    return "".join(parts)


def _shape(raw: dict[str, Any], shape: str) -> str:
    if shape != "auto":
        return shape
    if "conversations" in raw:
        return "llava"
    if "messages" in raw:
        return "messages"
    if "instruction" in raw and "output" in raw:
        return "instruction"
    return "llava"


def normalize(raw: Any, default_id: str, shape: str = "auto") -> Normalized:
    """Apply rules 1-4 to one input record and build its output form.

    ``shape``: "auto" (per record: ``conversations`` -> llava, ``messages`` -> messages,
    ``instruction`` + ``output`` -> a one-turn conversation), "llava" or "messages" (forced).
    ``default_id`` is used when the record has no ``id``, or an empty or white-space-only one; any
    other string id is kept verbatim.
    """
    if type(raw) is dict and shape != "messages" and "conversations" in raw:
        fast = _fast_llava(raw, default_id)
        if fast is not None:
            return fast
    if not isinstance(raw, dict):
        return _reject("malformed", f"record is {_type(raw)}, expected an object", default_id)
    rid = raw.get("id", default_id)
    t = type(rid)
    if t is not str:
        if t is int:
            rid = str(rid)
        else:
            return _reject("malformed", f"id is {_type(rid)}, expected a string or an integer", default_id)
    elif not rid.strip():
        rid = default_id  # an empty or white-space id counts as missing
    kind = _shape(raw, shape)

    # ---- images and turns as (role, value) --------------------------------------------------
    if kind == "messages":
        im = raw["images"] if "images" in raw else raw.get("image")
        key = "images" if "images" in raw else "image"
    else:
        im = raw.get("image")
        key = "image"
    if im is None:
        images: list[str] = []
    elif type(im) is str:
        images = [im]
    elif type(im) is list:
        for k, p in enumerate(im):
            if type(p) is not str:
                return _reject("malformed", f"{key}[{k}] is {_type(p)}, expected a string path", rid)
        images = list(im)
    else:
        return _reject("malformed", f"{key} is {_type(im)}, expected a string or a list of strings", rid)

    roles: list[str] = []
    values: list[str] = []
    if kind == "llava":
        conv = raw.get("conversations")
        if type(conv) is not list or not conv:
            if conv is None:
                extra = ""
                if "captions" in raw:
                    extra = " (a captions record, not a conversation)"
                elif "text" in raw and "question_id" in raw:
                    extra = " (an evaluation question, not a conversation)"
                return _reject("malformed", f"no 'conversations' (or 'messages') list{extra}", rid)
            return _reject("malformed", "'conversations' is " + ("an empty list" if type(conv) is list else _type(conv))
                           + ", expected a non-empty list of turns", rid)
        for k, turn in enumerate(conv):
            if type(turn) is not dict:
                return _reject("malformed", f"conversations[{k}] is {_type(turn)}, expected an object", rid)
            r = turn.get("from")
            v = turn.get("value")
            if type(r) is not str or type(v) is not str:
                bad, x = ("from", r) if type(r) is not str else ("value", v)
                what = "missing" if bad not in turn else f"{_type(x)}, expected a string"
                return _reject("malformed", f"conversations[{k}].{bad} is {what}", rid)
            roles.append(r)
            values.append(v)
        skip = _LLAVA_KEYS
    elif kind == "messages":
        msgs = raw.get("messages")
        if type(msgs) is not list or not msgs:
            if msgs is None:
                return _reject("malformed", "no 'messages' (or 'conversations') list", rid)
            return _reject("malformed", "'messages' is " + ("an empty list" if type(msgs) is list else _type(msgs))
                           + ", expected a non-empty list of turns", rid)
        for k, turn in enumerate(msgs):
            if type(turn) is not dict:
                return _reject("malformed", f"messages[{k}] is {_type(turn)}, expected an object", rid)
            r = turn.get("role")
            v = turn.get("content")
            if type(r) is not str:
                what = "missing" if "role" not in turn else f"{_type(r)}, expected a string"
                return _reject("malformed", f"messages[{k}].role is {what}", rid)
            if type(v) is not str:
                if type(v) is list:
                    v = _flatten_content(v, images, f"messages[{k}]")
                    if type(v) is tuple:
                        return _reject(v[0], v[1], rid)
                else:
                    what = "missing" if "content" not in turn else f"{_type(v)}, expected a string or a content list"
                    return _reject("malformed", f"messages[{k}].content is {what}", rid)
            roles.append(r)
            values.append(v)
        skip = _MESSAGES_KEYS
    else:  # instruction / output: one human turn, one gpt turn
        ins, out, inp = raw.get("instruction"), raw.get("output"), raw.get("input", "")
        for name, x in (("instruction", ins), ("output", out), ("input", inp)):
            if type(x) is not str:
                return _reject("malformed", f"{name} is {_type(x)}, expected a string", rid)
        q = ins.strip()
        if inp.strip():
            q = q + "\n" + inp.strip()
        if images and IMAGE_TOKEN not in q:  # LLaVA convention: the image(s) come before the question
            q = (IMAGE_TOKEN + "\n") * len(images) + q
        roles = ["human", "gpt"]
        values = [q, out]
        skip = _INSTRUCTION_KEYS

    # ---- rule 2: roles --------------------------------------------------------------------
    system = None
    if roles[0] == "system":
        system = values[0]
        roles = roles[1:]
        values = values[1:]
    n = len(roles)
    if n == 0:
        return _reject("bad_roles", "only a system turn, no human/gpt turns", rid)
    out_roles: list[str] = []
    for k in range(n):
        r = _ROLE.get(roles[k])
        want = "human" if k % 2 == 0 else "gpt"
        if r != want:
            off = k + (system is not None)
            if r is None:
                detail = f"turn {off} has role {roles[k]!r}" + (" (a system turn must come first)" if roles[k] == "system" else "")
            else:
                detail = f"turn {off} is {r}, expected {want} (turns must alternate human/gpt starting with human)"
            return _reject("bad_roles", detail, rid)
        out_roles.append(r)
    if n % 2:
        return _reject("bad_roles", f"the last turn ({n - 1 + (system is not None)}) is an unanswered human turn", rid)

    # ---- rule 3: empty turns ----------------------------------------------------------------
    if system is not None:
        system = system.strip()
        if not system:
            return _reject("empty_turn", "the system turn is empty", rid)
    stripped = [v.strip() for v in values]
    for k in range(n):
        if not stripped[k]:
            return _reject("empty_turn", f"turn {k + (system is not None)} ({out_roles[k]}) is empty", rid)

    # ---- rule 4: <image> tokens ---------------------------------------------------------------
    ntok = 0
    for k in range(0, n, 2):
        ntok += stripped[k].count(IMAGE_TOKEN)
    if ntok != len(images):
        for k in range(1, n, 2):
            if IMAGE_TOKEN in stripped[k]:
                return _reject("image_token_mismatch", f"<image> in a gpt turn (turn {k + (system is not None)})", rid)
        return _reject("image_token_mismatch", f"{ntok} <image> token(s) in human turns, {len(images)} image(s)", rid)
    for k in range(1, n, 2):
        if IMAGE_TOKEN in stripped[k]:
            return _reject("image_token_mismatch", f"<image> in a gpt turn (turn {k + (system is not None)})", rid)
    if system is not None and IMAGE_TOKEN in system:
        return _reject("image_token_mismatch", "<image> in the system turn", rid)

    # ---- the output record ----------------------------------------------------------------------
    rec: dict[str, Any] = {"id": rid}
    if images:
        rec["image"] = images[0] if len(images) == 1 else images
    if system is not None:
        rec["system"] = system
    rec["conversations"] = [{"from": out_roles[k], "value": stripped[k]} for k in range(n)]
    for k, v in raw.items():
        if k not in skip and k not in rec:
            rec[k] = v
    if system is not None:
        return Normalized(None, "", rid, rec, images, ["system", *out_roles], [system, *stripped])
    return Normalized(None, "", rid, rec, images, out_roles, stripped)


def _fast_llava(raw: dict[str, Any], default_id: str) -> Normalized | None:
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
        if "\0".join(values[0::2]).count(IMAGE_TOKEN) != len(images) or IMAGE_TOKEN in "\0".join(values[1::2]):
            return None
    elif IMAGE_TOKEN in "\0".join(values):  # text-only: one scan
        return None
    rec: dict[str, Any] = {"id": rid}
    if images:
        rec["image"] = images[0] if len(images) == 1 else list(images)
    rec["conversations"] = [{"from": r, "value": v} for r, v in zip(roles, values)]
    if len(raw) > 3 or "id" not in raw or "image" not in raw:
        for k, v in raw.items():
            if k not in _LLAVA_KEYS:
                rec[k] = v
    return _new((None, "", rid, rec, list(images), roles, values))


def unsafe_path_reason(p: str) -> str | None:
    """Why an image path is unsafe on its face (empty, absolute, a ``..`` component), else None.

    Symlinks that leave the root are caught later, on the real file system.
    """
    if not p:
        return "empty image path"
    if "\x00" in p:
        return f"{p!r}: NUL byte in the path"
    if p[0] in "/\\" or (len(p) > 1 and p[1] == ":" and p[0].isalpha()):
        return f"{p}: absolute path"
    if ".." in _SEP.split(p):
        return f"{p}: '..' component"
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
        msgs.append({"role": _OUT_ROLE[t["from"]], "content": t["value"]})
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
