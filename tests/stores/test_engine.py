"""``create_engine``: a database URL homing cannot run on is one ConfigurationError saying what
to write instead, never SQLAlchemy's error and never the URL's password."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from homing.errors import ConfigurationError
from homing.stores.sql import create_engine

EXPECTED = "postgresql+asyncpg://USER@HOST:5432/DB or sqlite+aiosqlite:///PATH"
#: SQLAlchemy's default PostgreSQL driver: psycopg2 before 2.1, psycopg since.
DEFAULT_PG = make_url("postgresql://").get_dialect().driver


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "postgresql://u:pass-word-1@127.0.0.1:5432/test",
            f"the database URL's scheme 'postgresql' selects SQLAlchemy's default driver for "
            f"postgresql, {DEFAULT_PG}; homing runs on the async driver asyncpg: write "
            "postgresql+asyncpg://USER@HOST:5432/DB",
        ),
        (
            "postgresql+psycopg2://u:pass-word-1@127.0.0.1/test",
            "the database URL's scheme 'postgresql+psycopg2' selects the psycopg2 driver; homing "
            "runs on the async driver asyncpg: write postgresql+asyncpg://USER@HOST:5432/DB",
        ),
        (
            "sqlite:///pass-word-1.db",
            "the database URL's scheme 'sqlite' selects SQLAlchemy's default driver for sqlite, "
            "pysqlite; homing runs on the async driver aiosqlite: write sqlite+aiosqlite:///PATH",
        ),
        (
            "nonsense://u:pass-word-1@127.0.0.1/db",
            "the database URL's scheme 'nonsense' names a database or driver SQLAlchemy does "
            f"not know; write {EXPECTED}",
        ),
        (
            "postgresql+nodriver://u:pass-word-1@127.0.0.1/db",
            "the database URL's scheme 'postgresql+nodriver' names a database or driver "
            f"SQLAlchemy does not know; write {EXPECTED}",
        ),
        (
            "mysql://u:pass-word-1@127.0.0.1/db",
            "the database URL's scheme 'mysql' selects SQLAlchemy's default driver for mysql, "
            f"mysqldb, which is not async; homing needs an async driver: write {EXPECTED}",
        ),
        (
            "not a url with pass-word-1",
            f"the database URL cannot be read as a URL; write {EXPECTED}",
        ),
        (
            "postgresql+asyncpg://u:pass-word-1@127.0.0.1:port/db",
            f"the database URL cannot be read as a URL; write {EXPECTED}",
        ),
    ],
)
def test_a_url_homing_cannot_run_on_says_what_to_write(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_engine(url)
    assert str(caught.value) == says
    # Nothing of SQLAlchemy's error, which may quote the URL, rides along in a traceback.
    shown = "".join(traceback.format_exception(caught.value))
    assert "pass-word-1" not in shown
    assert "sqlalchemy.exc" not in shown


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    with pytest.raises(ConfigurationError) as caught:
        create_engine("postgresql+asyncpg://u:pass-word-1@127.0.0.1/db")
    assert str(caught.value) == (
        "the database URL's scheme 'postgresql+asyncpg' needs the driver module 'asyncpg', "
        "which is not installed (pip install 'homing[sql]')"
    )


def test_a_missing_driver_homing_does_not_bring_is_not_an_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "aiomysql", None)
    with pytest.raises(ConfigurationError) as caught:
        create_engine("mysql+aiomysql://u:pass-word-1@127.0.0.1/db")
    assert str(caught.value) == (
        "the database URL's scheme 'mysql+aiomysql' needs the driver module 'aiomysql', which "
        f"is not installed (install it, or write {EXPECTED}, whose drivers homing[sql] "
        "installs)"
    )


async def test_the_urls_homing_runs_on_make_an_engine(tmp_path: Path) -> None:
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'homing.db'}"
    for url in (sqlite, "postgresql+asyncpg://u:pass-word-1@127.0.0.1/db"):
        engine = create_engine(url)  # nothing connects yet
        await engine.dispose()
