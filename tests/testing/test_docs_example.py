"""docs/testing.md's example, copied into a fresh project, passes under a plain ``pytest``.

The project is a new directory with nothing but the page's files: no conftest, no
configuration, not this repository's. The plugin reaches it through its entry point.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILE_BLOCK = re.compile(r'```python title="([^"]+)"\n(.*?)```', flags=re.DOTALL)


def _page_files() -> dict[str, str]:
    return dict(FILE_BLOCK.findall((ROOT / "docs" / "testing.md").read_text()))


def _pytest_in(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMING_", "PYTEST_"))}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_the_page_holds_a_service_and_its_tests() -> None:
    assert sorted(_page_files()) == ["shop.py", "test_shop.py"]


def test_the_example_passes_in_a_fresh_project(tmp_path: Path) -> None:
    for name, code in _page_files().items():
        (tmp_path / name).write_text(code)
    run = _pytest_in(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^4 passed", run.stdout, flags=re.MULTILINE), run.stdout


def test_the_service_can_be_named_in_configuration(tmp_path: Path) -> None:
    files = _page_files()
    (tmp_path / "shop.py").write_text(files["shop.py"])
    # The page's tests without their own `homing` fixture: the plugin's finds shop:homing.
    tests = re.sub(
        r"@pytest\.fixture\ndef homing\(\).*?return shop\.homing\n",
        "",
        files["test_shop.py"],
        flags=re.DOTALL,
    )
    assert "def homing" not in tests
    (tmp_path / "test_shop.py").write_text(tests)
    (tmp_path / "pytest.ini").write_text("[pytest]\nhoming_app = shop:homing\n")
    run = _pytest_in(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^4 passed", run.stdout, flags=re.MULTILINE), run.stdout


@pytest.mark.parametrize(
    ("ini", "says"),
    [
        ("", "define a `homing` fixture returning your Homing"),
        ("homing_app = shop:nothing_here\n", "shop has no 'nothing_here'"),
        (
            "homing_app = shop:receipts\n",
            "neither a Homing nor an app whose state or push endpoint holds one",
        ),
    ],
)
def test_without_a_service_the_fixtures_say_what_to_do(tmp_path: Path, ini: str, says: str) -> None:
    (tmp_path / "shop.py").write_text(_page_files()["shop.py"])
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + ini)
    (tmp_path / "test_it.py").write_text("def test_it(homing_publisher):\n    pass\n")
    run = _pytest_in(tmp_path)
    assert run.returncode == 1
    assert says in run.stdout
