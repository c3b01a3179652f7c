"""What a release states: one version everywhere."""

from __future__ import annotations

import importlib.metadata
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
