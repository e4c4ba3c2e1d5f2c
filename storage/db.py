"""Database engines and transactions.

SQLite (aiosqlite, one thread trip per statement: storage/sqlite_driver.py) is the
default: WAL journal, a busy timeout, and write transactions that take the write lock
when they begin (``BEGIN IMMEDIATE``) so two writers queue instead of failing half-way.
PostgreSQL (asyncpg) is used for several processes. Neither blocks the event loop, with
one exception that keeps it so: on SQLite, the message path's statements (its batches
and the writer's inserts, storage/messages.py) run on the loop's own thread, as short
as they are, once the process's write lock is theirs; a lock another process holds is
waited for in a thread, and WAL checkpoints, which write the database file and flush it
to disk, are made in a thread too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import jsonio, messages, sqlite_driver


def async_url(url: str, base_dir: Path | None = None) -> str:
    """Turn a configured URL into one for the async driver; resolve relative SQLite paths."""
    u = make_url(url.replace("postgres://", "postgresql://", 1))
    if u.get_backend_name() == "sqlite":
        u = u.set(drivername="sqlite+aiosqlite")
        db = u.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            path = Path(db)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            path.parent.mkdir(parents=True, exist_ok=True)
            u = u.set(database=str(path))
    elif u.get_backend_name() == "postgresql":
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


# temp_store: a savepoint's journal (each conversation's table work in a batch, the
# writer's waiting writes) is kept in memory; on disk it was a temporary file made,
# written and deleted in every such transaction (~40% of the bot's pwrite calls).
_SQLITE_PRAGMAS = [
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA temp_store=MEMORY",
]
SQLITE_PRAGMAS = [*_SQLITE_PRAGMAS, f"PRAGMA busy_timeout={sqlite_driver.BUSY_TIMEOUT_MS}"]
# Connections whose statements run on the event loop's thread: they never wait for a lock
# there (sqlite_driver.run waits in a thread) nor checkpoint (messages.Writer does).
SQLITE_INLINE_PRAGMAS = [*_SQLITE_PRAGMAS, "PRAGMA busy_timeout=0", "PRAGMA wal_autocheckpoint=0"]


def _sqlite_setup(
    engine: AsyncEngine, immediate: bool | None, pragmas: list[str] = SQLITE_PRAGMAS
) -> None:
    """Pragmas on every connection; `immediate`: transactions that SQLAlchemy begins take
    the write lock at BEGIN (True), or not (False); None: SQLAlchemy begins none."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (see below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        for pragma in pragmas:
            cur.execute(pragma)
        cur.close()

    if immediate is None:
        return

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock at BEGIN, so they queue instead of failing half-way.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """Engines and session factories.

    `transaction()` is the unit of work for writes; `sessions()` is for reads. On SQLite,
    writes also queue on an in-process lock: SQLite allows one writer at a time anyway,
    and waiting on an asyncio lock is prompt where SQLite's busy handler sleeps and polls.
    Reads use their own connections with a plain (deferred) BEGIN and never wait for
    writers (WAL).
    """

    def __init__(
        self, url: str, base_dir: Path | None = None, pool_size: int = 10, **engine_kw: Any
    ) -> None:
        self.url = async_url(url, base_dir)
        self.is_sqlite = self.url.startswith("sqlite")
        kw: dict[str, Any] = {
            "json_serializer": jsonio.dumps,
            "json_deserializer": jsonio.loads,
            **engine_kw,
        }
        if not self.is_sqlite:
            kw.setdefault("pool_size", pool_size)
            kw.setdefault("max_overflow", pool_size)
            kw.setdefault("pool_pre_ping", True)
        if self.is_sqlite:
            kw.setdefault("module", sqlite_driver.dbapi())
        self.engine = create_async_engine(self.url, **kw)
        self._write_lock: asyncio.Lock | None = None
        # The message path's batches (storage/messages.py) make their own transactions
        # (SQLite: BEGIN and COMMIT in the same calls as their first and last statements;
        # PostgreSQL: statements that commit themselves, or BEGIN for table work): to
        # SQLAlchemy, autocommit connections.
        batch_kw = {**kw, "isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
        if self.is_sqlite:
            batch_kw["module"] = sqlite_driver.dbapi(inline=True)
        else:
            batch_kw["pool_pre_ping"] = False  # a dead connection fails the batch, retried
        self.batch_engine = create_async_engine(self.url, **batch_kw)
        if self.is_sqlite:
            _sqlite_setup(self.engine, immediate=True)
            self.read_engine = create_async_engine(self.url, **kw)
            _sqlite_setup(self.read_engine, immediate=False)
            _sqlite_setup(self.batch_engine, immediate=None, pragmas=SQLITE_INLINE_PRAGMAS)
            self._write_lock = asyncio.Lock()
        else:
            self.read_engine = self.engine
        self._writes = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        # Storing incoming events and recording sent messages: a connection of their own.
        self.writer = messages.Writer(
            self.url, self.is_sqlite, self._write_lock, SQLITE_INLINE_PRAGMAS
        )
        self.sessions = async_sessionmaker(
            self.read_engine, class_=AsyncSession, expire_on_commit=False
        )

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one of the message path's batches, which makes its own
        transactions (storage/messages.py), with an ORM session on the same connection
        for table work. SQLite: the batch is this process's writer meanwhile. PostgreSQL:
        the sent marks recorded meanwhile wait for its last statement."""
        if self._write_lock is None:
            self.writer.batch_started()  # its last statement takes the sent marks waiting
            try:
                async with self.batch_engine.connect() as conn:
                    yield conn
            finally:
                self.writer.batch_ended()
            return
        self.writer.batches_waiting += 1  # the writer leaves its queued writes to the batch
        try:
            await self._write_lock.acquire()
        finally:
            self.writer.batches_waiting -= 1
        try:
            async with self.batch_engine.connect() as conn:
                yield conn
        finally:
            self._write_lock.release()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose work commits together on success and rolls back on error."""
        if self._write_lock is None:
            async with self._writes() as session, session.begin():
                yield session
            return
        async with self._write_lock, self._writes() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        await self.writer.close()
        await self.batch_engine.dispose()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def run_migrations(url: str, base_dir: Path | None = None, revision: str = "head") -> None:
    """Bring the schema up to `revision` with Alembic (blocking; call before serving)."""
    from alembic import command
    from alembic.config import Config

    here = Path(__file__).resolve().parent
    cfg = Config()
    cfg.set_main_option("script_location", str(here / "migrations"))
    cfg.attributes["database_url"] = async_url(url, base_dir)
    command.upgrade(cfg, revision)
