"""The operator commands find the service (--app, HOMING_APP, a checkout's reference service)
and answer a database they cannot use with one line, never a traceback or a password."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from homing.cli import main
from tests.support import ROOT

#: SQLAlchemy's default PostgreSQL driver: psycopg2 before 2.1, psycopg since.
DEFAULT_PG = make_url("postgresql://").get_dialect().driver


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
            "DATABASE_URL: the database URL cannot be read as a URL; write "
            "postgresql+asyncpg://USER@HOST:5432/DB or sqlite+aiosqlite:///PATH",
        ),
        (
            # The sync driver's URL: installing homing[sql] would not fix it; asyncpg would.
            "postgresql://u:pass-word-1@127.0.0.1:5432/test",
            "DATABASE_URL: the database URL's scheme 'postgresql' selects SQLAlchemy's default "
            "driver for "
            f"postgresql, {DEFAULT_PG}; homing runs on the async driver asyncpg: write "
            "postgresql+asyncpg://USER@HOST:5432/DB",
        ),
        (
            "mysql+aiomysql://u:pass-word-1@127.0.0.1/db",
            "DATABASE_URL: the database URL's scheme 'mysql+aiomysql' needs the driver module "
            "'aiomysql', "
            "which is not installed (install it, or write postgresql+asyncpg://USER@HOST:5432/DB "
            "or sqlite+aiosqlite:///PATH, whose drivers homing[sql] installs)",
        ),
        (
            "nosuchdb://u:pass-word-1@127.0.0.1/db",
            "DATABASE_URL: the database URL's scheme 'nosuchdb' names a database or driver "
            "SQLAlchemy does "
            "not know; write postgresql+asyncpg://USER@HOST:5432/DB or sqlite+aiosqlite:///PATH",
        ),
        (
            "sqlite:///pass-word-1.db",
            "DATABASE_URL: the database URL's scheme 'sqlite' selects SQLAlchemy's default "
            "driver for sqlite, pysqlite; homing runs on the async driver aiosqlite: write sqlite+aiosqlite:///PATH",
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
        "homing: error: DATABASE_URL: the database URL's scheme 'postgresql+asyncpg' needs the "
        "driver "
        "module 'asyncpg', which is not installed (pip install 'homing[sql]')\n"
    )


def test_a_service_on_sqlalchemys_own_engine_gets_the_same_advice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec(DEFAULT_PG) is not None:
        pytest.skip(f"{DEFAULT_PG} is installed here, so postgresql:// makes an engine")
    (tmp_path / "own_engine.py").write_text(
        "import os\n"
        "from sqlalchemy.ext.asyncio import create_async_engine\n\n"
        "def create():\n"
        "    create_async_engine(os.environ['DATABASE_URL'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pass-word-1@127.0.0.1/test")
    assert main(["quarantine", "list", "--app", "own_engine:create"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"homing: error: the database URL (DATABASE_URL) selects a driver whose module "
        f"{DEFAULT_PG!r} is not installed, and homing's SQL stores do not run on it; write "
        "postgresql+asyncpg://USER@HOST:5432/DB or sqlite+aiosqlite:///PATH\n"
    )
    assert "homing[sql]" not in err
