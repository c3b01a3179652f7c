"""Text from outside made safe to print: control characters shown, never obeyed.

A quarantine reason, a log line or a CLI listing may hold text an attacker chose (an attribute,
a message id). Written raw, a newline forges another log line and an ANSI escape rewrites the
terminal; escaped, it reads as what it is.
"""

from __future__ import annotations

import re

#: C0 controls, DEL and C1 controls (Unicode category Cc).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str) -> str:
    """``text`` with each control character written as ``\\xNN``."""
    if _CONTROL.search(text) is None:  # the common case: nothing to replace, nothing copied
        return text
    return _CONTROL.sub(_escaped, text)
