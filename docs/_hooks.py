"""MkDocs hook: docstrings' Sphinx roles (:class:`~homing.Homing`) shown as plain code."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|exc):<code>(~?)([\w.]+)</code>")


def _shown(match: re.Match[str]) -> str:
    short, name = match.group(1), match.group(2)
    return f"<code>{name.rpartition('.')[2] if short else name}</code>"


def on_page_content(html: str, **_kwargs: Any) -> str:
    return _ROLE.sub(_shown, html)
