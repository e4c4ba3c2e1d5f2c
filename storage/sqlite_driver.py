"""SQLAlchemy's aiosqlite driver, with one trip to SQLite's thread per statement, or none.

aiosqlite runs each sqlite3 call in the connection's own thread and hands the result back
to the event loop. SQLAlchemy's adapter makes four such trips for every statement (open a
cursor, execute, fetch, close), and a trip costs far more than a statement on a local
file. Here a statement — executed, fetched and closed — is one trip. Everything else (the
pool, transactions, the thread itself) is the stock aiosqlite driver.

    create_async_engine("sqlite+aiosqlite:///…", module=dbapi())

`dbapi(inline=True)` makes connections (`InlineConnection`) that run their statements on
the event loop's own thread, with no trip at all: for the message path, whose statements
are short and whose writers queue in the process beforehand (storage/db.py). A trip is
not the cost of the statement but of waiting, in SQLite's thread and then in the event
loop's queue, with the write lock held meanwhile. Such a connection never waits for a
lock on the loop's thread (busy timeout 0): `run` makes a call that finds the write lock
taken by another process again in the connection's thread, which waits there.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    AsyncAdapt_aiosqlite_ss_cursor,
)


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> tuple:
    """In one call (in SQLite's thread, or the loop's for an `InlineConnection`): the
    whole statement, with what the cursor reports."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, rows, cursor.lastrowid, cursor.rowcount
    finally:
        cursor.close()


class _Cursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()

    def _one_trip(self, operation: Any, parameters: Any, many: bool) -> None:
        try:
            aio = self._connection
            description, rows, lastrowid, rowcount = self.await_(
                aio._execute(_run, aio._conn, operation, parameters, many)  # type: ignore[attr-defined]
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        if description:
            self.description = description
            self.lastrowid = self.rowcount = -1
            self._rows = deque(rows)
        else:
            self.description = None
            self.lastrowid, self.rowcount = lastrowid, rowcount

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        self._one_trip(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        self._one_trip(operation, seq_of_parameters, many=True)


class _Connection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    def cursor(self, server_side: bool = False) -> AsyncAdapt_aiosqlite_cursor:
        if server_side:
            return AsyncAdapt_aiosqlite_ss_cursor(self)
        return _Cursor(self)


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose calls run where they are awaited (the event loop's
    thread); `in_thread` runs one in the connection's own thread instead. Its sqlite3
    connection must allow use from both threads (check_same_thread=False)."""

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await aiosqlite.Connection._execute(self, fn, *args)


def inline_connect(database: str, **kwargs: Any) -> InlineConnection:
    """`aiosqlite.connect` for an `InlineConnection`."""
    kwargs["check_same_thread"] = False
    return InlineConnection(lambda: sqlite3.connect(database, **kwargs), 64)


def is_busy(exc: BaseException) -> bool:
    """SQLite could not take a lock: another connection holds it."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF == 5


T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000  # how long a connection waits for a lock another one holds


async def run(
    aio: InlineConnection,
    fn: Callable[..., T],
    *args: Any,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
) -> T:
    """`fn(aio's sqlite3 connection, *args)`, on the loop's thread. If it finds a lock
    taken (then it must have done nothing, or undone what it did), it is run again in the
    connection's thread, which waits up to `busy_timeout_ms` for the lock."""
    try:
        return fn(aio._conn, *args)
    except sqlite3.OperationalError as exc:
        if not is_busy(exc):
            raise
    return await aio.in_thread(_waiting, aio._conn, busy_timeout_ms, fn, args)  # type: ignore[no-any-return]


def _waiting(
    conn: sqlite3.Connection, timeout_ms: int, fn: Callable[..., Any], args: tuple[Any, ...]
) -> Any:
    conn.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")
    try:
        return fn(conn, *args)
    finally:
        conn.execute("PRAGMA busy_timeout=0")


class _DBAPI(AsyncAdapt_aiosqlite_dbapi):
    def __init__(self, inline: bool) -> None:
        super().__init__(aiosqlite, sqlite3)
        self.inline = inline

    def connect(self, *arg: Any, **kw: Any) -> _Connection:
        if self.inline:
            kw["async_creator_fn"] = inline_connect
        adapted = super().connect(*arg, **kw)
        return _Connection(self, adapted._connection)


def dbapi(inline: bool = False) -> AsyncAdapt_aiosqlite_dbapi:
    """The `module` to give `create_async_engine` for a sqlite+aiosqlite URL; `inline`:
    its connections are `InlineConnection`s (give them a busy timeout of 0)."""
    return _DBAPI(inline)
