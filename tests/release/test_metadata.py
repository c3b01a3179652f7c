"""What a release states: one version everywhere, the changelog's shape, and a README that reads
on a package index."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path

import homing

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_version_has_one_source() -> None:
    assert PROJECT["dynamic"] == ["version"]
    assert "version" not in PROJECT
    command = Path(sys.executable).parent / "homing"
    said = subprocess.run(
        [str(command), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert said == f"homing {homing.__version__}\n"
    assert importlib.metadata.version("homing") == homing.__version__


def test_the_changelog_keeps_unreleased_on_top_and_dates_each_release() -> None:
    headings = re.findall(r"^## (.+)$", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert headings[0] == "[Unreleased]"
    released = []
    for heading in headings[1:]:
        match = re.fullmatch(r"\[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})", heading)
        assert match, f"a release's heading is '[X.Y.Z] - YYYY-MM-DD', not {heading!r}"
        released.append((tuple(map(int, match[1].split("."))), date.fromisoformat(match[2])))
    assert released == sorted(released, reverse=True)  # newest first, by version and by date


def test_the_readme_links_nothing_relative() -> None:
    """On a package index page a relative link leads nowhere: absolute URLs or plain text."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)", readme) + re.findall(r"(?:href|src)=\"([^\"]+)", readme)
    assert [t for t in targets if not t.startswith(("https://", "http://", "#"))] == []
    assert "../" not in readme
