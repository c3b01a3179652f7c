"""What `make dist` builds: the wheel and sdist carry what they should, twine passes them, and the
wheel works on its own — installed with its extras into a fresh venv outside the checkout,
pinned by the development lock — with the version it says everywhere."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

import pytest
import readme_renderer.markdown

import homing
from tests.release.push_in_venv import EXTRA_MODULES

pytestmark = [pytest.mark.dist, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "dev.lock"
VERSION = homing.__version__
#: The extras a service installs homing with (not the development ones: docs, dev).
EXTRAS = ["pubsub", "sql", "flask", "metrics", "otel", "fastapi", "server", "tasks", "django"]


@dataclass(frozen=True)
class Artifacts:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """Built as `make dist` builds them: the sdist, then the wheel from it."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=ROOT)
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return Artifacts(wheel=wheel, sdist=sdist)


def _run(argv: list[str], cwd: Path) -> str:
    """Run outside this process's environment: nothing of the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMING_", "PYTEST_"))}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    run = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert run.returncode == 0, f"{argv}\n{run.stdout}\n{run.stderr}"
    return run.stdout


def _venv_with(tmp_path: Path, requirement: str) -> Path:
    """A fresh venv in ``tmp_path`` (outside the checkout) holding ``requirement``, pinned."""
    assert not tmp_path.is_relative_to(ROOT)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "-c", str(LOCK), requirement], tmp_path)
    return python


def _pins() -> dict[str, str]:
    pins = (line.split("==") for line in LOCK.read_text().splitlines() if "==" in line)
    return {_normal(name): version for name, version in pins}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _assert_works_on_its_own(python: Path, tmp_path: Path, extras: list[str]) -> None:
    listed = _run([str(python), "-m", "pip", "list", "--format=json"], cwd=tmp_path)
    installed = {_normal(d["name"]): d["version"] for d in json.loads(listed)}
    assert installed.pop("homing") == VERSION
    for seed in ("pip", "setuptools", "wheel"):  # the venv's own, as `pip freeze` leaves out
        installed.pop(seed, None)
    pins = _pins()
    drifted = {name: v for name, v in installed.items() if pins.get(name) != v}
    assert drifted == {}, "installed, and not as requirements/dev.lock pins it"
    _run([str(python), "-m", "pip", "check"], cwd=tmp_path)

    command = python.parent / "homing"
    assert _run([str(command), "--version"], cwd=tmp_path) == f"homing {VERSION}\n"

    script = Path(__file__).with_name("push_in_venv.py")
    seen = json.loads(_run([str(python), str(script), str(tmp_path), *extras], cwd=tmp_path))
    assert seen["statuses"] == [204, 204]  # handled, then a duplicate
    assert seen["handled"] == [7]  # the handler ran once
    assert seen["version"] == seen["metadata_version"] == VERSION
    assert Path(seen["location"]).is_relative_to(python.parent.parent)  # the wheel's homing
    assert seen["imported"] == [EXTRA_MODULES[extra] for extra in extras]


def test_the_wheel_holds_the_package_its_types_and_license_and_nothing_else(
    artifacts: Artifacts,
) -> None:
    assert artifacts.wheel.name == f"homing-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(artifacts.wheel) as wheel:
        names = wheel.namelist()
        metadata = HeaderParser().parsestr(
            wheel.read(f"homing-{VERSION}.dist-info/METADATA").decode()
        )
    info = f"homing-{VERSION}.dist-info/"
    assert [n for n in names if not n.startswith(("homing/", info))] == []
    assert [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))] == []
    assert "homing/py.typed" in names
    assert f"{info}licenses/LICENSE" in names
    modules = {n for n in names if n.endswith(".py")}
    assert modules == {
        str(p.relative_to(ROOT / "src")) for p in (ROOT / "src" / "homing").rglob("*.py")
    }
    assert metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert set(EXTRAS) <= set(metadata.get_all("Provides-Extra") or [])


def test_the_sdist_holds_the_source_and_no_tests_or_caches(artifacts: Artifacts) -> None:
    assert artifacts.sdist.name == f"homing-{VERSION}.tar.gz"
    top = f"homing-{VERSION}/"
    with tarfile.open(artifacts.sdist) as sdist:
        names = [name.removeprefix(top) for name in sdist.getnames()]
    for needed in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "PKG-INFO"):
        assert needed in names
    assert "src/homing/py.typed" in names
    assert [n for n in names if n.startswith(("tests", "examples", "bench", ".venv"))] == []
    assert [n for n in names if "__pycache__" in n or "_cache" in n or n.endswith(".pyc")] == []


def test_twine_passes_both(artifacts: Artifacts, tmp_path: Path) -> None:
    twine = [sys.executable, "-m", "twine", "check", "--strict"]
    out = _run([*twine, str(artifacts.wheel), str(artifacts.sdist)], cwd=tmp_path)
    assert out.count("PASSED") == 2, out


def test_the_description_renders_as_an_index_shows_it(artifacts: Artifacts) -> None:
    with zipfile.ZipFile(artifacts.wheel) as wheel:
        metadata = wheel.read(f"homing-{VERSION}.dist-info/METADATA").decode()
    description = HeaderParser().parsestr(metadata).get_payload()
    assert isinstance(description, str)
    html = readme_renderer.markdown.render(description)  # what twine check and PyPI use
    assert html is not None
    assert re.search(r"<h2[^>]*>Installing", html)
    assert html.count("<table>") >= 4
    links = re.findall(r'href="([^"]+)"', html)
    assert [link for link in links if not link.startswith(("#", "https://"))] == []


def test_the_wheel_works_on_its_own_with_every_extra(artifacts: Artifacts, tmp_path: Path) -> None:
    python = _venv_with(tmp_path, f"{artifacts.wheel}[{','.join(EXTRAS)}]")
    _assert_works_on_its_own(python, tmp_path, EXTRAS)


def test_the_wheel_works_on_its_own_without_extras(artifacts: Artifacts, tmp_path: Path) -> None:
    python = _venv_with(tmp_path, str(artifacts.wheel))
    _assert_works_on_its_own(python, tmp_path, [])
