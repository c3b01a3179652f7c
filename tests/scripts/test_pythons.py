"""scripts/pythons.py: which Pythons, where they are, what a missing one does, drift."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from scripts import pythons

RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
PROJECT = tomllib.loads((pythons.ROOT / "pyproject.toml").read_text())["project"]


def test_the_classifiers_name_every_python_tested_from_the_oldest_required() -> None:
    versions = pythons.supported()
    minors = [int(v.split(".")[1]) for v in versions]
    assert minors == list(range(minors[0], minors[-1] + 1))  # none left out between
    assert PROJECT["requires-python"] == f">={versions[0]}"
    assert RUNNING in versions  # .venv's, the whole suite
    assert pythons.others() == [v for v in versions if v != RUNNING]


def test_the_running_python_is_found_as_itself() -> None:
    found = pythons.interpreter(RUNNING)
    assert found is not None
    assert pythons._runs_as(found, RUNNING)


def test_a_python_not_on_the_machine_is_not_found() -> None:
    assert pythons.interpreter("3.99") is None


def test_a_missing_python_fails_under_ci_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CI", "true")
    assert pythons.test(["3.99"], []) == 1
    err = capsys.readouterr().err
    assert "Python 3.99 is supported" in err
    assert "required in CI" in err
    assert "FAILED on Python 3.99 (not found)" in err


def test_a_missing_python_is_skipped_elsewhere_saying_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert pythons.test(["3.99"], []) == 0
    assert "skipping Python 3.99: no interpreter found" in capsys.readouterr().err


def test_drift_is_what_the_lock_does_not_pin(tmp_path: Path) -> None:
    venv, lock = Path(sys.prefix), pythons.lock_for(RUNNING)  # this venv, built from its lock
    assert pythons.unpinned(venv, lock) == []
    pins = lock.read_text().splitlines()
    shorter = tmp_path / "dev.lock"
    shorter.write_text("\n".join(line for line in pins if not line.startswith("orjson==")))
    [drifted] = pythons.unpinned(venv, shorter)
    assert drifted.startswith("orjson==")
