"""scripts/pythons.py: which Pythons, where they are, what a missing one does, drift."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from pathlib import Path

import asyncpg
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
    assert pythons.run_suites(["3.99"], []) == 1
    err = capsys.readouterr().err
    assert "Python 3.99 is supported" in err
    assert "required in CI" in err
    assert "FAILED on Python 3.99 (not found)" in err


def test_a_missing_python_is_skipped_elsewhere_saying_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert pythons.run_suites(["3.99"], []) == 0
    assert "skipping Python 3.99: no interpreter found" in capsys.readouterr().err


def test_drift_is_what_the_lock_does_not_pin(tmp_path: Path) -> None:
    venv, lock = Path(sys.prefix), pythons.lock_for(RUNNING)  # this venv, built from its lock
    assert pythons.unpinned(venv, lock) == []
    pins = lock.read_text().splitlines()
    shorter = tmp_path / "dev.lock"
    shorter.write_text("\n".join(line for line in pins if not line.startswith("orjson==")))
    [drifted] = pythons.unpinned(venv, shorter)
    assert drifted.startswith("orjson==")


def test_beside_fails_when_its_command_fails_and_passes_when_it_passes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert pythons.run_suites([], [], [sys.executable, "-c", "raise SystemExit(3)"]) == 1
    assert f"FAILED on {sys.executable} -c raise SystemExit(3)" in capsys.readouterr().err
    assert pythons.run_suites([], [], [sys.executable, "-c", "pass"]) == 0


def test_beside_is_given_its_command_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], list[str], list[str]]] = []
    monkeypatch.setattr(pythons, "others", lambda: ["3.99"])

    def run_suites(*args: list[str]) -> int:
        seen.append(args)  # type: ignore[arg-type]
        return 0

    monkeypatch.setattr(pythons, "run_suites", run_suites)
    assert pythons.main(["test", "-x", "--beside", "pytest", "-m", "e2e or dist"]) == 0
    assert seen == [(["3.99"], ["-x"], ["pytest", "-m", "e2e or dist"])]


def test_each_other_python_gets_a_database_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[list[str]] = []

    def run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        made.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(pythons, "POSTGRES_URL", "postgresql+asyncpg://u@h:5432/test?ssl=off")
    monkeypatch.setattr(subprocess, "run", run)
    url = pythons.database_for("3.12", Path("/venv"))
    assert url == "postgresql+asyncpg://u@h:5432/test_py312?ssl=off"
    [command] = made
    assert command[0] == "/venv/bin/python"
    assert command[-2:] == ["postgresql://u@h:5432/test?ssl=off", "test_py312"]


@pytest.mark.postgres
def test_the_database_is_made_on_the_server_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import POSTGRES_URL

    monkeypatch.setattr(pythons, "POSTGRES_URL", POSTGRES_URL)
    venv = Path(sys.prefix)  # this venv: it has asyncpg
    url = pythons.database_for("9.99", venv)
    assert url.endswith("_py999")
    assert pythons.database_for("9.99", venv) == url  # there already: left as it is

    async def exists_then_drop() -> bool:
        admin = await asyncpg.connect(POSTGRES_URL.replace("+asyncpg", ""))
        try:
            name = url.rsplit("/", 1)[1]
            found = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            return bool(found)
        finally:
            await admin.close()

    assert asyncio.run(exists_then_drop())


def test_a_venv_that_will_not_build_fails_the_run_from_its_lane(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def drifted(version: str, python: str) -> Path:
        raise SystemExit("pythons: .venv-3.12 holds what requirements/dev.lock does not pin")

    monkeypatch.setattr(pythons, "interpreter", lambda version: sys.executable)
    monkeypatch.setattr(pythons, "venv_for", drifted)
    assert pythons.run_suites(["3.12"], [], [sys.executable, "-c", "pass"]) == 1
    err = capsys.readouterr().err
    assert "does not pin" in err
    assert "FAILED on Python 3.12 (its venv)" in err


def test_a_version_pinned_apart_has_its_own_lock_with_those_pins_and_dev_locks_others() -> None:
    for version, pins in pythons.PINNED_APART.items():
        assert version in pythons.supported()
        own = pythons.lock_for(version)
        assert own.name == f"dev-{version}.lock"  # `make lock` made it, and it is committed
        locked = {pythons._name(line) for line in own.read_text().splitlines() if "==" in line}
        for name, pin in pins.items():
            assert f"{name}=={pin}" in locked
        # Everything else dev.lock pins that the version installs is pinned alike.
        apart = {pythons._name(line) for line in pythons.apart_from_dev_lock(version)}
        assert locked <= apart
