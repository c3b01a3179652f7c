"""SQLite for SQLAlchemy's async engine, called inline in the event loop instead of a thread.

aiosqlite runs every statement on a thread of its own and hands the result back to the event
loop: two thread switches per call, which cost far more than the statement. SQLite is a library
in this process and a short statement on a WAL database takes tens of microseconds, so here it
runs where it is called. The one wait that can be long — another *process* holding the write
lock — is not waited for inline: the connection's busy timeout is 0 in the event loop, and a
statement that finds the database locked is run again on a worker thread that may wait up to
``timeout`` seconds for the lock.

These classes give the stdlib ``sqlite3`` connection the coroutine interface of an
``aiosqlite.Connection``, so SQLAlchemy's ``sqlite+aiosqlite`` dialect, and everything users
write on top of it (``AsyncSession``, Core), work unchanged: :func:`homing.stores.sql.create_engine`
plugs it in through SQLAlchemy's ``async_creator``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def _locked(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY


class InlineCursor:
    """An ``aiosqlite.Cursor`` look-alike whose coroutines finish without suspending."""

    __slots__ = ("_connection", "_cursor")

    def __init__(self, connection: InlineConnection) -> None:
        self._connection = connection
        self._cursor = connection._conn.cursor()

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        cursor = self._cursor
        try:
            if parameters is None:
                cursor.execute(sql)
            else:
                cursor.execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            await self._connection._wait_for_lock(cursor.execute, sql, parameters or ())
        return self

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> InlineCursor:
        rows = list(rows)
        try:
            self._cursor.executemany(sql, rows)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            await self._connection._wait_for_lock(self._cursor.executemany, sql, rows)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def nextset(self) -> None:
        return None

    async def setinputsizes(self, *_sizes: Any) -> None:
        return None

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _RunNow:
    """Stands in for aiosqlite's request queue, which SQLAlchemy uses to set isolation levels."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # handed to the awaiting caller, as aiosqlite does
            future.set_exception(exc)


class InlineConnection:
    """An ``aiosqlite.Connection`` look-alike over a stdlib ``sqlite3`` connection."""

    def __init__(self, connection: sqlite3.Connection, *, timeout: float) -> None:
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection  # SQLAlchemy checks it
        self._tx = _RunNow()
        self._timeout_ms = int(timeout * 1000)
        connection.execute("PRAGMA busy_timeout = 0")

    async def _wait_for_lock(self, call: Callable[..., Any], *args: Any) -> None:
        """Run ``call`` again on a thread, waiting for another process's lock to go."""

        def waiting() -> None:
            self._conn.execute(f"PRAGMA busy_timeout = {self._timeout_ms}")
            try:
                call(*args)
            finally:
                self._conn.execute("PRAGMA busy_timeout = 0")

        await asyncio.to_thread(waiting)

    def cursor(self) -> InlineCursor:
        return InlineCursor(self)

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        return await InlineCursor(self).execute(sql, parameters)

    async def commit(self) -> None:
        try:
            self._conn.commit()
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            await self._wait_for_lock(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._conn.isolation_level = value  # type: ignore[assignment]  # SQLAlchemy checks it


def inline_creator(path: str, *, timeout: float) -> Callable[[], Any]:
    """An ``async_creator`` for :func:`sqlalchemy.ext.asyncio.create_async_engine`."""

    async def connect() -> InlineConnection:
        # check_same_thread=False: the rare lock wait runs the same connection on a worker
        # thread, while the event loop awaits it and touches nothing else on it.
        connection = sqlite3.connect(
            path, timeout=timeout, check_same_thread=False, uri=path.startswith("file:")
        )
        return InlineConnection(connection, timeout=timeout)

    return connect
