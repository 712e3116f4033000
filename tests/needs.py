"""Optional test dependencies that must not skip silently in CI.

``need("wids")`` imports the module; where it is missing the test is skipped with the install hint,
except under CI (the ``CI`` environment variable, set by GitHub Actions and most CI services), where a
missing dev dependency fails the test: CI installs ``.[dev]``, so a skip there would hide a broken setup.
"""

from __future__ import annotations

import importlib
import os

import pytest


def need(module: str, extra: str = "dev"):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing under CI ({e}); install .[{extra}]", pytrace=False)
        pytest.skip(f"{module} not installed (pip install -e '.[{extra}]')")
