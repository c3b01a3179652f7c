"""The docs site builds in strict mode, and a broken link fails the build (as `make docs`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def _build(root: Path) -> subprocess.CompletedProcess[str]:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    return subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(root / "site")],
        cwd=root,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)  # docs/ holds its hook
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    for shared in ("src", "examples", "README.md"):  # the API reference and the pages' snippets
        (tmp_path / shared).symlink_to(ROOT / shared)
    return tmp_path


def test_a_broken_link_fails_the_build(copy: Path) -> None:
    page = copy / "docs" / "concepts.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md).\n")
    run = _build(copy)
    assert run.returncode == 1, run.stderr
    assert "contains a link 'missing.md', but the target is not found" in run.stderr


def test_the_site_builds_with_the_api_reference(copy: Path) -> None:
    run = _build(copy)
    assert run.returncode == 0, run.stderr
    reference = (copy / "site" / "reference" / "index.html").read_text()
    assert "push_body" in reference
    assert "FlaskHoming" in reference
    assert ":class:" not in reference  # docstrings' Sphinx roles are shown as code
    quickstart = (copy / "site" / "quickstart" / "index.html").read_text()
    assert "from_env" in quickstart  # examples/quickstart.py, included
