"""The Python code blocks of README.md and docs/*.md, and how each one is checked.

An HTML comment on the line before a block (blank lines between are allowed) says how:

- ``<!-- run: NAME -->``: ``tests/docs/test_code_blocks.py`` runs the block in the setting
  its runner ``NAME`` prepares (the names the block uses but does not define) and asserts
  what the block should have done;
- ``<!-- checked-by: tests/PATH.py -->``: that test runs it (a file the page includes, or a
  block it copies into a project of its own) and names the page or the included file;
- ``<!-- illustrative: REASON -->``: not run, for the reason given (Google credentials, a
  network), which may not be empty.

A block with no comment is run on its own, as a module, in an empty directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT

PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
PYTHON = frozenset({"python", "py", "python3", "pycon"})

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>[a-z-]+)\s*:(?P<value>.*?)-->\s*$")
_SNIPPET = re.compile(r'^--8<--\s+"(?P<path>[^"]+)"\s*$')


@dataclass(frozen=True)
class Block:
    """One fenced Python block: where it is, its code (dedented) and its marker, if any."""

    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    kind: str | None  # "run", "checked-by", "illustrative", or an unknown word
    value: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def included(self) -> str | None:
        """The file a ``--8<--`` block includes (mkdocs' snippets), if it is one."""
        match = _SNIPPET.match(self.code.strip())
        return match["path"] if match else None


def python_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page`` in a Python language, in order."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = (opening["info"].split() or [""])[0].lower()
        end = index + 1
        while end < len(lines) and not _closes(lines[end], fence):
            end += 1
        if language in PYTHON:
            margin = " " * indent
            body = [
                line[indent:] if line.startswith(margin) else line.lstrip()
                for line in lines[index + 1 : end]
            ]
            kind, value = _marker(lines, index)
            blocks.append(
                Block(page, index + 1, language, "\n".join(body) + "\n", kind, value.strip())
            )
        index = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in python_blocks(page)]


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0])


def _marker(lines: list[str], fence_index: int) -> tuple[str | None, str]:
    before = fence_index - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    match = MARKER.match(lines[before]) if before >= 0 else None
    return (match["kind"], match["value"]) if match else (None, "")
