"""What a release states: one version everywhere, and a README that reads on a package index."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
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


def test_the_readme_links_nothing_relative() -> None:
    """On a package index page a relative link leads nowhere: absolute URLs or plain text."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)", readme) + re.findall(r"(?:href|src)=\"([^\"]+)", readme)
    assert [t for t in targets if not t.startswith(("https://", "http://", "#"))] == []
    assert "../" not in readme
