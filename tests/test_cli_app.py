"""The operator commands find the service (--app, HOMING_APP, a checkout's reference service)
and answer a database they cannot use with one line, never a traceback or a password."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from homing.cli import main
from tests.support import ROOT


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOMING_APP", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/ops.db")
    monkeypatch.setenv("HOMING_SIGNING_KEYS", "cli-key:a-cli-secret-long-enough-to-sign")
    monkeypatch.setenv("HOMING_PUBLISHER", "memory")


def test_homing_app_is_read_when_app_is_absent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # not a checkout: only HOMING_APP can name the service
    monkeypatch.setenv("HOMING_APP", "users_api.app:create_app")
    assert main(["quarantine", "list"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "the quarantine is empty\n"
    assert captured.err == ""


def test_app_wins_over_homing_app(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOMING_APP", "no_such_module:app")
    assert main(["quarantine", "list", "--app", "users_api.app:create_app"]) == 0
    assert capsys.readouterr().out == "the quarantine is empty\n"


def test_in_a_checkout_the_reference_service_is_the_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT / "docs")  # anywhere inside the checkout
    assert main(["quarantine", "list"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "the quarantine is empty\n"
    assert captured.err == (
        f"homing: the reference service of the checkout at {ROOT} (users_api.app:create_app); "
        "--app or HOMING_APP names another\n"
    )


def test_outside_a_checkout_without_app_it_says_how_to_name_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["outbox", "flush"]) == 2
    assert capsys.readouterr().err == (
        "homing: error: which service? pass --app MODULE:ATTRIBUTE or set "
        "HOMING_APP=MODULE:ATTRIBUTE (the reference service is the default only inside a "
        "checkout of homing)\n"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "not a url with pass-word-1",
            "the database URL (DATABASE_URL) cannot be read as a URL; expected "
            "postgresql+asyncpg://USER@HOST:5432/DB or sqlite+aiosqlite:///PATH",
        ),
        (
            "mysql+aiomysql://u:pass-word-1@127.0.0.1/db",
            "the database URL (DATABASE_URL) names a driver whose module 'aiomysql' is not "
            "installed; homing's SQL stores use postgresql+asyncpg://USER@HOST:5432/DB or "
            "sqlite+aiosqlite:///PATH (pip install 'homing[sql]')",
        ),
        (
            "nosuchdb://u:pass-word-1@127.0.0.1/db",
            "the database URL (DATABASE_URL) names a database SQLAlchemy has no dialect for "
            "('nosuchdb'); homing's SQL stores use postgresql+asyncpg://USER@HOST:5432/DB or "
            "sqlite+aiosqlite:///PATH",
        ),
        (
            "sqlite:///pass-word-1.db",
            "the database URL (DATABASE_URL) names a driver that is not async; use "
            "postgresql+asyncpg://USER@HOST:5432/DB or sqlite+aiosqlite:///PATH",
        ),
        (
            "postgresql+asyncpg://u:pass-word-1@127.0.0.1:1/db",
            "cannot use the database: ConnectionRefusedError: [Errno 111] Connect call failed "
            "('127.0.0.1', 1)",
        ),
    ],
)
def test_a_database_it_cannot_use_gets_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, says: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["quarantine", "list", "--app", "users_api.app:create_app"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"homing: error: {says}\n"
    assert "pass-word-1" not in captured.err


def test_a_missing_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@127.0.0.1/db")
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    assert main(["quarantine", "list", "--app", "users_api.app:create_app"]) == 2
    assert capsys.readouterr().err == (
        "homing: error: the module 'asyncpg' is not installed (pip install 'homing[sql]')\n"
    )
