"""A problem found in a shard data set: which shard, which sample key, what is wrong."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One finding. ``key`` is None when it concerns a whole shard (or the data set: ``shard`` "-").

    ``code`` is a stable short name for scripts (``sha256_mismatch``, ``truncated``, ``bad_json``, ...).
    """

    shard: str
    key: str | None
    message: str
    code: str = "problem"

    def __str__(self) -> str:
        where = self.shard if self.key is None else f"{self.shard} {self.key}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
