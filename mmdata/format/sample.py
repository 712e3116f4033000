"""The ``{key}.json`` member of a shard sample, typed: written by the shard writer, read by the
loader, the length counter and inspect through ``ShardSample.from_json`` (no dict re-parsing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["ImageMeta", "ShardSample", "SampleError"]


class SampleError(ValueError):
    """A sample json that cannot be used: ``reason`` is a reject/bad-sample code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class ImageMeta:
    """One stored image as the json lists it (the stored size and the tokens it costs)."""

    width: int
    height: int
    image_tokens: int
    orig_width: int | None = None
    orig_height: int | None = None
    passthrough: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "orig_width": self.orig_width,
                "orig_height": self.orig_height, "image_tokens": self.image_tokens, "passthrough": self.passthrough}

    @classmethod
    def from_json(cls, m: Any, k: int) -> "ImageMeta":
        try:
            return cls(int(m["width"]), int(m["height"]), int(m["image_tokens"]), m.get("orig_width"),
                       m.get("orig_height"), m.get("passthrough"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise SampleError("broken_json", f"image {k}: no usable width/height/image_tokens") from None


@dataclass
class ShardSample:
    """A clean conversation record (CONTRACT s.1) plus its stored images' metadata.

    ``record`` keeps every key of the json in order (``images`` and ``image_tokens`` included once
    read back), so ``to_json`` is byte-identical to what was read or first written.
    """

    record: dict[str, Any]
    images: list[ImageMeta]

    @property
    def id(self) -> str:
        return str(self.record.get("id"))

    @property
    def image_tokens(self) -> int:
        return sum(m.image_tokens for m in self.images)

    @property
    def conversations(self) -> list[dict[str, Any]]:
        return self.record.get("conversations", [])

    def to_json(self) -> bytes:
        """The member bytes: the record's keys, then ``images`` and ``image_tokens`` (in place if present)."""
        out = dict(self.record)
        out["images"] = [m.to_json() for m in self.images]
        out["image_tokens"] = self.image_tokens
        return orjson.dumps(out)

    @classmethod
    def from_json(cls, data: bytes) -> "ShardSample":
        """Parse a ``{key}.json`` member; SampleError(``broken_json``) if it is not a usable sample json."""
        try:
            rec = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise SampleError("broken_json", f"invalid JSON: {e.msg} at char {e.pos}") from None
        if not isinstance(rec, dict):
            raise SampleError("broken_json", "the json is not an object")
        metas = rec.get("images", [])
        if not isinstance(metas, list):
            raise SampleError("broken_json", "'images' is not a list")
        return cls(rec, [ImageMeta.from_json(m, k) for k, m in enumerate(metas)])
