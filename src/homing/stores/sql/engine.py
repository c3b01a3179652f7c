"""The engine homing's SQL stores run on, the one error they raise, and the driver-level helpers
of their hot paths.

:func:`create_engine` makes an async engine tuned for SQLite or PostgreSQL (on SQLite, with
:mod:`homing.stores.sql._sqlite_inline` running statements in the event loop);
:class:`translate_errors` turns what a database or its driver raises into
:class:`~homing.errors.StoreError`; :class:`CompiledStatement` and :class:`driver_cursor` run
homing's own fixed statements on the driver's cursor.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import Insert, String, Table, event, insert
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from homing.errors import ConfigurationError, StoreBusy, StoreError
from homing.stores.sql._sqlite_inline import DBAPI as inline_sqlite_dbapi

#: The driver homing's SQL stores run on, per database, and a URL that selects it. (Their
#: hot-path statements are compiled with positional parameters: psycopg's named ones won't do.)
_DRIVERS = {
    "postgresql": ("asyncpg", "postgresql+asyncpg://USER@HOST:5432/DB"),
    "sqlite": ("aiosqlite", "sqlite+aiosqlite:///PATH"),
}
_EXPECTED = " or ".join(example for _, example in _DRIVERS.values())


def create_engine(url: str, *, inline_sqlite: bool = True, **options: Any) -> AsyncEngine:
    """An async engine for homing's stores and the service's own tables.

    **SQLite** (``sqlite+aiosqlite:///...``): WAL with ``synchronous=NORMAL`` (a commit survives
    the process being killed; the last commits before a power cut or an OS crash may be lost, as
    with any WAL database at that setting), one pooled connection per process, and statements
    run inline in the event loop rather than on aiosqlite's thread (``inline_sqlite=False``
    keeps aiosqlite's thread): a short statement costs tens of microseconds, the thread hop
    around it well over a hundred. A statement that finds the database locked by another
    process waits for it on a worker thread, never in the event loop (up to 30 s, or
    ``connect_args={"timeout": ...}``). With one connection, this process's requests queue for
    it in order instead of sleeping on SQLite's lock.

    **PostgreSQL**: up to 15 connections, kept open (SQLAlchemy's default opens and closes ten
    of them again and again under load, and the handshakes cost more than the statements). A
    request waits at most 5 s for one to come free (``pool_timeout``; SQLAlchemy's default is
    30 s, past a push's default 10 s deadline): then the store raises
    :class:`~homing.errors.StoreBusy` and the push is answered 503 with ``Retry-After``.

    For both, a refused or failed *connect* — which asyncpg reports as a bare ``OSError`` —
    surfaces as SQLAlchemy's ``OperationalError`` like every other database error, so an
    application needs to handle only ``SQLAlchemyError`` (homing's stores turn it into
    :class:`~homing.errors.StoreError`).

    Raises:
        ConfigurationError: ``url`` cannot be read, names a database or driver SQLAlchemy does
            not know, a driver homing does not run on (``postgresql://`` selects psycopg, not
            asyncpg; ``sqlite://`` the synchronous pysqlite), or one that is not installed.
            The message says what to write instead and never repeats the URL (it may hold a
            password).
    """
    database = _checked_url(url)
    if database.get_backend_name() == "postgresql":
        options.setdefault("pool_size", 15)
        options.setdefault("max_overflow", 0)
        options.setdefault("pool_timeout", 5)
    sqlite_db = database.get_backend_name() == "sqlite"
    if sqlite_db:
        connect_args = options.setdefault("connect_args", {})
        connect_args.setdefault("timeout", 30)
        options.setdefault("pool_size", 1)
        options.setdefault("max_overflow", 0)
        options.setdefault("pool_timeout", 60)
        if inline_sqlite and database.get_driver_name() == "aiosqlite":
            options.setdefault("module", inline_sqlite_dbapi)
    try:
        engine = create_async_engine(database, **options)
    except ImportError as exc:  # the driver's module, which SQLAlchemy imports here
        fix = (
            "pip install 'homing[sql]'"
            if database.get_backend_name() in _DRIVERS
            else f"install it, or write {_EXPECTED}, whose drivers homing[sql] installs"
        )
        raise ConfigurationError(
            f"the database URL's scheme {database.drivername!r} needs the driver module "
            f"{exc.name or '?'!r}, which is not installed ({fix})"
        ) from None

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except (OSError, TimeoutError) as exc:
            # Raised as the driver's own error class, SQLAlchemy wraps it and says "connect".
            raise dialect.loaded_dbapi.OperationalError(f"could not connect: {exc}") from exc

    if sqlite_db:

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


def _checked_url(url: str) -> URL:
    """``url`` parsed, if homing can run on the database and driver it names.

    Raises :class:`ConfigurationError` saying what to write instead; ``url`` itself is never
    repeated, and SQLAlchemy's error (which may quote it) is not chained.
    """
    try:
        database = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigurationError(
            f"the database URL cannot be read as a URL; write {_EXPECTED}"
        ) from None
    scheme = database.drivername
    try:
        dialect = database.get_dialect()
    except NoSuchModuleError:
        raise ConfigurationError(
            f"the database URL's scheme {scheme!r} names a database or driver SQLAlchemy does "
            f"not know; write {_EXPECTED}"
        ) from None
    backend = database.get_backend_name()
    selects = (
        f"selects the {dialect.driver} driver"
        if "+" in scheme
        else f"selects SQLAlchemy's default driver for {backend}, {dialect.driver}"
    )
    if backend in _DRIVERS:
        driver, example = _DRIVERS[backend]
        if dialect.driver != driver:
            raise ConfigurationError(
                f"the database URL's scheme {scheme!r} {selects}; homing runs on the async "
                f"driver {driver}: write {example}"
            )
    elif not dialect.get_async_dialect_cls(database).is_async:
        raise ConfigurationError(
            f"the database URL's scheme {scheme!r} {selects}, which is not async; homing "
            f"needs an async driver: write {_EXPECTED}"
        )
    return database


#: What a database or its driver raises when it is down, unreachable or failing.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    OSError,
    TimeoutError,
    sqlite3.Error,
)


class translate_errors:
    """Turn driver and connection errors into :class:`StoreError`, saying what was being done.

    Every store method runs its database work inside it (``with`` or ``async with``), so
    callers handle one error. A class rather than a generator: it is on every event's path.
    """

    __slots__ = ("doing", "engine")

    def __init__(self, doing: str, engine: AsyncEngine | None = None) -> None:
        self.doing = doing
        self.engine = engine  # for the driver's own errors, where a store calls the driver

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        if exc is None:
            return
        errors = DRIVER_ERRORS
        if self.engine is not None:
            errors = (*errors, self.engine.dialect.loaded_dbapi.Error)
        if isinstance(exc, PoolTimeout):
            raise StoreBusy(
                f"no pooled database connection came free while {self.doing}: {describe(exc)}"
            ) from exc
        if isinstance(exc, errors):
            raise StoreError(f"the database failed while {self.doing}: {describe(exc)}") from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        self.__exit__(exc_type, exc, traceback)


def describe(exc: BaseException) -> str:
    """The error's class and the first line of its message, for a log line or a StoreError."""
    # SQLAlchemy's message carries the statement and its parameters; the first line does not.
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}"


def lost_connection(exc: BaseException) -> bool:
    """Whether a handler's statement failed because the database went away, not the handler.

    Then it is answered 503 (store unavailable) like any other store error.
    """
    if isinstance(exc, OSError | TimeoutError | OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class CompiledStatement:
    """A statement compiled once for its engine's dialect and run on a DBAPI cursor.

    Homing's own hot-path statements never change, so they skip SQLAlchemy's per-call
    compilation, caching and result set-up: measured here, most of the cost of a
    one-statement transaction apart from the database's own work.
    """

    __slots__ = ("_constants", "_order", "sql")

    def __init__(self, engine: AsyncEngine, statement: Any) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self._order = tuple(compiled.positiontup or ())
        self._constants = compiled.params  # the values written into the statement itself

    def parameters(self, **values: Any) -> tuple[Any, ...]:
        given = self._constants | values
        return tuple(given[name] for name in self._order)

    def __call__(self, cursor: Any, **values: Any) -> Any:
        cursor.execute(self.sql, self.parameters(**values))
        return cursor


class InlineStatement:
    """A :class:`CompiledStatement` written out whole, its values as SQL literals, for the
    driver's simple query protocol: one round trip that may carry several statements.

    Strings are quoted by SQLAlchemy's own literal processor for the engine's dialect (never
    by hand); numbers must be finite. ``tests/stores/test_inline.py`` round-trips every kind
    of text through the server against the bound-parameter form.
    """

    __slots__ = ("_literal", "_pieces", "_statement")

    def __init__(self, engine: AsyncEngine, statement: CompiledStatement) -> None:
        self._statement = statement
        literal = String().literal_processor(engine.dialect)  # type: ignore[no-untyped-call]
        if literal is None:  # pragma: no cover - every SQL dialect quotes strings
            raise ConfigurationError(f"{engine.dialect.name} gives no string literal quoting")
        self._literal: Callable[[str], str] = literal
        # "...$1::VARCHAR..." -> ["...", 0, "::VARCHAR...", ...]: the n-th value goes at n - 1.
        self._pieces: list[str | int] = [
            int(part) - 1 if index % 2 else part
            for index, part in enumerate(re.split(r"\$(\d+)", statement.sql))
        ]

    def __call__(self, **values: Any) -> str:
        parameters = self._statement.parameters(**values)
        return "".join(
            piece if isinstance(piece, str) else self._render(parameters[piece])
            for piece in self._pieces
        )

    def _render(self, value: Any) -> str:
        if isinstance(value, str):
            return self._literal(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"no inline literal for {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"no inline literal for {value!r}")
        return repr(value)


class driver_cursor:
    """The driver's own cursor on ``connection``, inside its SQLAlchemy transaction.

    SQLAlchemy does not see what fails on it, so a failure other than a constraint's
    invalidates the connection here, as SQLAlchemy would after a lost connection: the pool then
    opens a new one instead of lending the dead one out again (a restarted server).
    """

    __slots__ = ("_connection", "_cursor")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._cursor: Any = None

    def __enter__(self) -> Any:
        pooled = self._connection.connection
        # homing's inline SQLite gives a cursor that skips the await SQLAlchemy's own
        # statements must make (homing's run in greenlets that do not check for one).
        quiet = getattr(pooled.dbapi_connection, "quiet_cursor", None)
        self._cursor = quiet() if quiet is not None else pooled.cursor()
        return self._cursor

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        cursor, connection = self._cursor, self._connection
        try:
            if isinstance(exc, Exception):
                dbapi = connection.dialect.loaded_dbapi
                if not isinstance(exc, dbapi.IntegrityError):
                    dbapi_connection = connection.connection.dbapi_connection
                    lost = isinstance(exc, OSError) or (
                        isinstance(exc, dbapi.Error)
                        and connection.dialect.is_disconnect(exc, dbapi_connection, cursor)
                    )
                    connection.invalidate(exc)
                    if lost:  # the server went away: its other pooled connections are as dead
                        connection.engine.dispose(close=False)
        finally:
            with contextlib.suppress(Exception):
                cursor.close()


def dialect_module(engine: AsyncEngine) -> Any:
    """The SQLAlchemy dialect package of ``engine`` (``sqlalchemy.dialects.sqlite``, ...),
    which the engine has loaded already: a service on SQLite never imports PostgreSQL's
    (tens of milliseconds of every cold start), nor the other way round."""
    name = engine.dialect.name
    return importlib.import_module(f"sqlalchemy.dialects.{_DIALECT_PACKAGES.get(name, name)}")


#: Dialects whose package has another name.
_DIALECT_PACKAGES = {"mariadb": "mysql"}


def insert_ignoring_conflicts(engine: AsyncEngine, table: Table) -> Insert:
    """An INSERT into ``table`` that leaves an existing row (same key) alone, in the dialect's
    words."""
    if engine.dialect.name in ("sqlite", "postgresql"):
        return dialect_module(engine).insert(table).on_conflict_do_nothing()  # type: ignore[no-any-return]
    return insert(table).prefix_with("IGNORE")  # MySQL and MariaDB
