"""Errors that the CLI turns into one clear line and an exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path


class MMDataError(Exception):
    """Base class: anything the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class InputError(MMDataError):
    """Unusable input: a missing file, invalid JSON, a bad option. Names the file and place."""

    def __init__(self, path: str | Path | None, message: str, line: int | None = None, col: int | None = None):
        self.path = str(path) if path is not None else None
        self.message = message
        self.line = line
        self.col = col
        super().__init__(self.format())

    def __reduce__(self):
        # Rebuild from the fields, not the message, so the error survives a worker process boundary.
        return (type(self), (self.path, self.message, self.line, self.col))

    def format(self) -> str:
        where = self.path or ""
        if self.path and self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return f"{where}: {self.message}" if where else self.message
