"""SQLite for SQLAlchemy's async engine, called inline in the event loop instead of a thread.

aiosqlite runs every statement on a thread of its own and hands the result back to the event
loop, and SQLAlchemy's adapter for it switches greenlets around every call: both cost far more
than the statement. SQLite is a library in this process and a short statement on a WAL
database takes tens of microseconds, so here it runs where it is called, through the stdlib's
``sqlite3`` with no coroutine in between. The one wait that can be long — another *process*
holding the write lock — never happens in the event loop: the busy timeout is 0 there, and a
statement that finds the database locked runs again on a worker thread that may wait up to
``timeout`` seconds for the lock, while the event loop serves other requests.

:data:`DBAPI` stands in for SQLAlchemy's aiosqlite DBAPI adapter (``create_async_engine(url,
module=DBAPI)`` on a ``sqlite+aiosqlite`` URL), so the dialect, and everything users write on
top of it (``AsyncSession``, Core), work unchanged; :func:`homing.stores.sql.create_engine`
plugs it in.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy.util.concurrency import await_

logger = logging.getLogger("homing.stores")

#: WAL pages after which a commit checkpoints inline anyway, should the checkpoint thread lag:
#: ten times SQLite's default (about 40 MB of WAL with 4 KB pages).
_INLINE_CHECKPOINT_PAGES = 10_000


def _locked(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY


def _await_nothing() -> None:
    """Await a finished future: one greenlet switch and back, no turn of the event loop.

    SQLAlchemy's ``AsyncConnection.execute`` checks that a statement awaited something (its
    guard against sync drivers plugged into an async engine); this satisfies it cheaply.
    """
    finished = asyncio.get_running_loop().create_future()
    finished.set_result(None)
    await_(finished)


class InlineCursor:
    """The stdlib cursor, but a locked database is waited for off the event loop."""

    __slots__ = ("_awaits", "_connection", "_cursor")

    def __init__(self, connection: InlineConnection, *, awaits: bool = True) -> None:
        self._connection = connection
        self._cursor = connection._connection.cursor()
        self._awaits = awaits  # for SQLAlchemy's statements; not for homing's own

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        try:
            self._cursor.execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            self._connection.wait_for_lock(self._cursor.execute, sql, parameters)
        else:
            if self._awaits:
                _await_nothing()
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> InlineCursor:
        rows = list(rows)
        try:
            self._cursor.executemany(sql, rows)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            self._connection.wait_for_lock(self._cursor.executemany, sql, rows)
        else:
            if self._awaits:
                _await_nothing()
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def close(self) -> None:
        self._cursor.close()

    def setinputsizes(self, *_sizes: Any) -> None:
        return None

    async def _async_soft_close(self) -> None:
        """Asked for by SQLAlchemy's async results, which close an async driver's cursor early;
        rows here are read on demand in this thread, so the cursor stays open until closed."""

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


class Checkpointer:
    """Copies a WAL database's log into its file on a thread of its own, twice a second.

    SQLite checkpoints inside the commit that crosses 1,000 WAL pages, and a checkpoint ends
    in an fsync: inline, that would stop the event loop for milliseconds every few hundred
    commits. Here the connections checkpoint only past :data:`_INLINE_CHECKPOINT_PAGES`, and
    this thread runs passive checkpoints, which never wait for, nor stop, readers and writers.
    Durability is unchanged: what a commit promises does not depend on who checkpoints.
    """

    def __init__(self, path: str, *, interval: float = 0.5) -> None:
        self.path, self.interval = path, interval
        self.users = 0
        #: Checkpoints run so far, and the last one's ``(busy, log frames, frames copied)``:
        #: what a test waits for and looks at, instead of sleeping for a few intervals.
        self.rounds = 0
        self.last: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="homing-sqlite-checkpoint")
        self._thread.daemon = True

    @staticmethod
    def join(path: str) -> None:
        """One more connection to ``path``; starts its checkpointer if none runs."""
        with _checkpointers_guard:
            checkpointer = _checkpointers.get(path)
            if checkpointer is None:
                checkpointer = _checkpointers[path] = Checkpointer(path)
                checkpointer._thread.start()
            checkpointer.users += 1

    @staticmethod
    def leave(path: str) -> None:
        """One connection fewer; the last one stops the checkpointer."""
        with _checkpointers_guard:
            checkpointer = _checkpointers.get(path)
            if checkpointer is None:
                return
            checkpointer.users -= 1
            if checkpointer.users <= 0:
                del _checkpointers[path]
                checkpointer._stop.set()

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, timeout=0)
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.last = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # busy, or the file is gone: try again later
                    logger.debug("checkpoint of %s: %s", self.path, exc)
                self.rounds += 1
        finally:
            connection.close()


# One checkpointer per database file in this process, whatever engines point at it.
_checkpointers: dict[str, Checkpointer] = {}
_checkpointers_guard = threading.Lock()


class InlineConnection:
    """A DBAPI connection over a stdlib ``sqlite3`` connection, for SQLAlchemy's async engine."""

    def __init__(self, connection: sqlite3.Connection, *, timeout: float, path: str) -> None:
        self._connection = connection  # what SQLAlchemy's dialect calls the driver connection
        self._timeout_ms = int(timeout * 1000)
        self._path = path
        connection.execute("PRAGMA busy_timeout = 0")
        if path:
            connection.execute(f"PRAGMA wal_autocheckpoint = {_INLINE_CHECKPOINT_PAGES}")
            Checkpointer.join(path)

    def wait_for_lock(self, call: Callable[..., Any], *args: Any) -> None:
        """Run ``call`` again on a worker thread, which may wait for another process's lock.

        Called from SQLAlchemy's greenlet, so the event loop goes on meanwhile; nothing else
        uses this connection then (the pool lent it to this caller alone).
        """

        def waiting() -> None:
            self._connection.execute(f"PRAGMA busy_timeout = {self._timeout_ms}")
            try:
                call(*args)
            finally:
                self._connection.execute("PRAGMA busy_timeout = 0")

        await_(asyncio.to_thread(waiting))

    def cursor(self, server_side: bool = False) -> InlineCursor:
        return InlineCursor(self)

    def quiet_cursor(self) -> InlineCursor:
        """A cursor for statements run outside SQLAlchemy's execution (homing's own): it does
        not await, which only SQLAlchemy's ``AsyncConnection.execute`` asks for."""
        return InlineCursor(self, awaits=False)

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        return self.cursor().execute(sql, parameters)

    def commit(self) -> None:
        try:
            self._connection.commit()
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            self.wait_for_lock(self._connection.commit)

    def rollback(self) -> None:
        self._connection.rollback()

    def close(self) -> None:
        if self._path:
            Checkpointer.leave(self._path)
            self._path = ""
        self._connection.close()

    def terminate(self) -> None:
        self.close()

    def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._connection.create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self._connection.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:
        self._connection.isolation_level = value


class InlineDBAPI:
    """The DBAPI module SQLAlchemy's aiosqlite dialect is given instead of its aiosqlite one."""

    paramstyle = "qmark"
    has_stop = True  # the dialect may terminate connections
    Error = sqlite3.Error
    DatabaseError = sqlite3.DatabaseError
    IntegrityError = sqlite3.IntegrityError
    NotSupportedError = sqlite3.NotSupportedError
    OperationalError = sqlite3.OperationalError
    ProgrammingError = sqlite3.ProgrammingError
    InterfaceError = sqlite3.InterfaceError
    InternalError = sqlite3.InternalError
    DataError = sqlite3.DataError
    Warning = sqlite3.Warning
    Binary = sqlite3.Binary
    PARSE_COLNAMES = sqlite3.PARSE_COLNAMES
    PARSE_DECLTYPES = sqlite3.PARSE_DECLTYPES
    sqlite_version = sqlite3.sqlite_version
    sqlite_version_info = sqlite3.sqlite_version_info
    sqlite = sqlite3

    def connect(self, database: str, *, timeout: float = 30.0, **options: Any) -> InlineConnection:
        # check_same_thread=False: the rare wait for another process's lock runs this
        # connection on a worker thread while the event loop awaits it.
        options.pop("check_same_thread", None)
        connection = sqlite3.connect(database, check_same_thread=False, **options)
        in_memory = database in ("", ":memory:") or "mode=memory" in database
        return InlineConnection(connection, timeout=timeout, path="" if in_memory else database)


DBAPI = InlineDBAPI()
