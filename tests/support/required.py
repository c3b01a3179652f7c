"""A tool or server a test needs: the test skips without it on a laptop, and fails in CI
(``CI`` set), where every one of them is installed and a skip would hide a lost test."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Fail under ``CI``, skip otherwise; ``reason`` says what is missing and why."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; it is required in CI", pytrace=False)
    pytest.skip(f"{reason}; required in CI")


def require(available: object, reason: str) -> None:
    """Go on when ``available`` is truthy; otherwise :func:`missing` with ``reason``."""
    if not available:
        missing(reason)


def required_tool(*names: str, install: str) -> str:
    """The path of the first of ``names`` on ``PATH``; :func:`missing` (saying how to
    ``install`` it) when none is there."""
    found = next((path for name in names if (path := shutil.which(name))), None)
    require(found, f"{' or '.join(names)} is not installed ({install})")
    assert found is not None
    return found
