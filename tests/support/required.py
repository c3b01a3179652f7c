"""A tool or server a test needs: the test skips without it on a laptop, and fails in CI
(``CI`` set), where every one of them is installed and a skip would hide a lost test."""

from __future__ import annotations

import os
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
