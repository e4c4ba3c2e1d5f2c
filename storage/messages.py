"""The message path's own statements: few, written out for each database, run in groups.

Every event that arrives and every message that leaves goes through these, thousands a
second. Through SQLAlchemy each statement would cost far more than the database's own
work, so they run on the driver's connection: on SQLite a whole group of statements is
one call, made on the event loop's thread (storage/sqlite_driver.py, `InlineConnection`:
no trip to SQLite's thread, whose waits would hold the write lock); on PostgreSQL they
are asyncpg's prepared statements. Values are converted by the columns' own SQLAlchemy
types, so what is written here reads back the same through the ORM.

- `Writer` — short transactions of their own: storing incoming events (the inbox), and
  recording messages as sent. A dedicated connection (SQLite) or pool (PostgreSQL). On
  SQLite, where one writer runs at a time, what is asked while another write holds the
  lock waits and goes together: first in the transaction of the next batch, when a batch
  is next in line for the lock (one commit fewer; its callers answer when the batch
  commits, and should the batch fail, the writes are made again on their own), or in
  a transaction of the writer's otherwise. Its connections do not checkpoint the WAL
  (that flushes the disk: not on the loop's thread); the writer does, in a thread, once
  a second at most while they write. On PostgreSQL the sent marks asked for while a
  batch runs go with that batch's last statement (one commit fewer), the others in a
  statement of their own.
- `Batch` — a conversation batch (bot/conversation.py): `load` reads the conversations
  and their pending events, `write` writes the states, the inbox marks and the outgoing
  messages and commits. On SQLite one transaction from the first to the last, in the
  same calls. On PostgreSQL two statements, each its own transaction, with no lock held
  between them (each a round trip that waits for a turn of the busy event loop: a
  transaction around them made three more): a state is written only over the version of
  its row the batch read, so that what another process wrote meanwhile is never written
  over (the batch is then run again). The ORM session of the batch's table actions runs
  on the same connection; on PostgreSQL their first write begins a transaction, which
  the last statement's COMMIT ends.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiosqlite
import asyncpg
from sqlalchemy import DateTime, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import jsonio, sqlite_driver
from storage.models import Conversation, InboxEvent, OutboxMessage, Rating

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (channel, user key)
CHECKPOINT_EVERY = 1.0  # seconds: the WAL is checkpointed this often at most

CONVERSATION_COLUMNS = (
    "id", "channel", "user_key", "citizen_id", "lang", "flow_version_id", "step", "vars",
    "started_at", "updated_at",
)  # fmt: skip
EVENT_COLUMNS = ("id", "channel", "user_key", "kind", "text", "payload", "turn", "lang", "attempts")
INBOX_INSERT = (
    "channel", "platform_id", "user_key", "kind", "text", "payload", "turn", "lang",
    "received_at", "status", "attempts",
)  # fmt: skip
STATE_WIDTH = 6  # lang, flow version, step, vars, updated_at; the conversation's id
OUTBOX_INSERT = (
    "channel", "recipient", "conversation_id", "body", "status", "attempts", "next_attempt_at",
    "claimed_until", "created_at",
)  # fmt: skip
RATING_INSERT = ("dossier_id", "citizen_id", "channel", "comment", "created_at")
ANSWER_INSERT = ("dossier_id", "criterion", "value", "label", "counts_as")


# ---------------------------------------------------------------- rows


@dataclass(slots=True)
class ConversationRow:
    """A conversation's row as the message path reads and writes it."""

    id: int
    channel: str
    user_key: str
    citizen_id: int
    lang: str
    flow_version_id: int | None
    step: str | None
    vars: dict[str, Any]
    started_at: datetime
    updated_at: datetime
    # PostgreSQL: the version of the row this was read from (its `xmin`); the batch writes
    # its new state only over that version.
    row_version: int | None = None


@dataclass(slots=True)
class EventRow:
    """A pending inbox event."""

    id: int
    channel: str
    user_key: str
    kind: str
    text: str | None
    payload: str | None
    turn: int | None
    lang: str | None
    attempts: int


@dataclass(slots=True)
class Outgoing:
    """An outbox message as the sender sends it (what `OutboxMessage` rows also offer)."""

    id: int
    channel: str
    recipient: str
    conversation_id: int | None
    body: dict[str, Any]
    attempts: int


@dataclass
class Loaded:
    """What a batch starts from."""

    conversations: dict[Key, ConversationRow] = field(default_factory=dict)
    events: dict[Key, list[EventRow]] = field(default_factory=lambda: defaultdict(list))
    # Flow id → its current version.
    pointers: dict[str, int] = field(default_factory=dict)
    # Each recipient's messages not sent yet (ids).
    unsent: dict[Key, list[int]] = field(default_factory=lambda: defaultdict(list))


@dataclass
class Changes:
    """What a batch writes at the end."""

    conversations: list[ConversationRow] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    # Failed attempts: {"id", "attempts", "error", "status", "processed_at"}.
    failures: list[dict[str, Any]] = field(default_factory=list)
    # Outbox rows (OUTBOX_INSERT columns), in order.
    messages: list[dict[str, Any]] = field(default_factory=list)


class Conflict(Exception):
    """Another process wrote one of the batch's conversations, or rated one of its
    dossiers, since the batch read them (PostgreSQL): the batch wrote nothing."""


@dataclass
class DeferredRating:
    """A rating (RATING_INSERT columns) and its answers ({"criterion", "value", "label",
    "counts_as"} each), stored with the batch's last statement (PostgreSQL)."""

    values: dict[str, Any]
    answers: list[dict[str, Any]]


# ---------------------------------------------------------------- conversion


class _Types:
    """The columns' SQLAlchemy conversions for one dialect, looked up once."""

    def __init__(self, dialect: Any) -> None:
        self.dialect = dialect

    def bind(self, table: Table, column: str) -> Callable[[Any], Any]:
        proc = table.c[column].type._cached_bind_processor(self.dialect)
        kind = table.c[column].type
        if proc is not None and isinstance(getattr(kind, "impl_instance", kind), DateTime):
            return _remembering(proc)
        return proc or _same

    def result(self, table: Table, column: str) -> Callable[[Any], Any]:
        proc = table.c[column].type._cached_result_processor(self.dialect, None)
        return proc or _same


def _same(value: Any) -> Any:
    return value


def _remembering(proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A datetime column's conversion that keeps its last result: a batch writes the same
    instant (its `now`) into many rows, and SQLAlchemy's formatting of it for SQLite
    costs several microseconds each time. Datetimes are immutable: the same object, the
    same result."""
    last: list[tuple[Any, Any]] = [(None, None)]  # (value, result), replaced as one

    def bind(value: Any) -> Any:
        seen, converted = last[0]
        if value is seen:
            return converted
        converted = proc(value)
        last[0] = (value, converted)
        return converted

    return bind


def _groups(keys: Iterable[Key]) -> dict[str, list[str]]:
    by_channel: dict[str, list[str]] = defaultdict(list)
    for channel, user_key in keys:
        by_channel[channel].append(user_key)
    return by_channel


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows of `width` values as that many columns: the arrays a PostgreSQL `unnest`
    takes (each column present, empty too, when there are no rows)."""
    return [[row[i] for row in rows] for i in range(width)]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


CONVERSATION: Table = Conversation.__table__  # type: ignore[attr-defined]
INBOX: Table = InboxEvent.__table__  # type: ignore[attr-defined]
OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
RATING: Table = Rating.__table__  # type: ignore[attr-defined]


class _Converters:
    def __init__(self, dialect: Any) -> None:
        t = _Types(dialect)
        self.conv_out = [t.result(CONVERSATION, c) for c in CONVERSATION_COLUMNS]
        self.conv_vars = t.bind(CONVERSATION, "vars")
        self.conv_time = t.bind(CONVERSATION, "updated_at")
        self.event_out = [t.result(INBOX, c) for c in EVENT_COLUMNS]
        self.inbox_in = [t.bind(INBOX, c) for c in INBOX_INSERT]
        self.inbox_time = t.bind(INBOX, "processed_at")
        self.outbox_in = [t.bind(OUTBOX, c) for c in OUTBOX_INSERT]
        self.outbox_time = t.bind(OUTBOX, "sent_at")
        self.rating_in = [t.bind(RATING, c) for c in RATING_INSERT]

    def conversation(self, row: Sequence[Any]) -> ConversationRow:
        return ConversationRow(*(f(v) for f, v in zip(self.conv_out, row, strict=True)))

    def event(self, row: Sequence[Any]) -> EventRow:
        return EventRow(*(f(v) for f, v in zip(self.event_out, row, strict=True)))

    def state(self, c: ConversationRow) -> tuple[Any, ...]:
        """A conversation's new state, as `_SET_STATE` and `_PG_STATES_AND_MESSAGES` take it
        (`STATE_WIDTH` values, the id last)."""
        return (
            c.lang,
            c.flow_version_id,
            c.step,
            self.conv_vars(c.vars),
            self.conv_time(c.updated_at),
            c.id,
        )

    def inbox_row(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(f(row[c]) for f, c in zip(self.inbox_in, INBOX_INSERT, strict=True))

    def outbox_row(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(f(row[c]) for f, c in zip(self.outbox_in, OUTBOX_INSERT, strict=True))

    def rating_row(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(f(row[c]) for f, c in zip(self.rating_in, RATING_INSERT, strict=True))


_JSON = {"json_serializer": jsonio.dumps, "json_deserializer": jsonio.loads}
SQLITE = _Converters(sqlite_dialect.dialect(**_JSON))
PG = _Converters(postgresql.asyncpg.dialect(**_JSON))  # type: ignore[attr-defined]

_CONV_SELECT = f"SELECT {', '.join(CONVERSATION_COLUMNS)} FROM conversation"
_EVENT_SELECT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM inbox"
_SET_STATE = (
    "UPDATE conversation SET lang = {0}, flow_version_id = {1}, step = {2}, vars = {3}, "
    "updated_at = {4} WHERE id = {5}"
)
_SET_FAILURE = (
    "UPDATE inbox SET attempts = {0}, error = {1}, status = {2}, processed_at = {3} WHERE id = {4}"
)
_SET_SENT = (
    "UPDATE outbox SET status = 'sent', sent_at = {0}, platform_message_id = {1}, "
    "last_error = NULL WHERE id = {2} AND status = 'sending'"
)


# A PostgreSQL batch's start in one statement, outside any transaction: the conversations
# asked for, each with the version of its row it was read at (`xmin`), their pending events
# in order, their unsent messages, and (with $3) the flows' current versions; one row
# layout for all four, told apart by the first column. Nothing is locked: the batch's last
# statement writes a state only over the version it read (_PG_WRITE).
_CONV, _EVENT, _UNSENT, _FLOW = range(4)
_LOAD_SLOTS = {  # the conversation's columns first, in their order
    "id": "int", "channel": "text", "user_key": "text", "citizen_id": "int", "lang": "text",
    "flow_version_id": "int", "step": "text", "vars": "json", "started_at": "timestamptz",
    "updated_at": "timestamptz", "row_version": "xid", "kind": "text", "text": "text",
    "payload": "text", "turn": "int", "attempts": "int", "flow": "text", "version": "int",
}  # fmt: skip
assert tuple(_LOAD_SLOTS)[: len(CONVERSATION_COLUMNS)] == CONVERSATION_COLUMNS


def _load_branch(kind: int, source: str, given: dict[str, str]) -> str:
    cols = [given.get(slot, f"NULL::{type_}") for slot, type_ in _LOAD_SLOTS.items()]
    return f"SELECT {kind}, {', '.join(cols)} FROM {source}"


_SLOT_AT = {slot: i for i, slot in enumerate(_LOAD_SLOTS, 1)}
_CONV_END = 1 + len(CONVERSATION_COLUMNS)
_ROW_VERSION = _SLOT_AT["row_version"]
_ID, _USER = _SLOT_AT["id"], _SLOT_AT["user_key"]
_EVENT_AT = [_SLOT_AT[c] for c in EVENT_COLUMNS]
_FLOW_ID, _FLOW_VERSION = _SLOT_AT["flow"], _SLOT_AT["version"]
_PG_LOAD = (
    " UNION ALL ".join(
        [
            _load_branch(
                _CONV,
                "conversation WHERE channel = $1 AND user_key = ANY($2::text[])",
                {**{c: c for c in CONVERSATION_COLUMNS}, "row_version": "xmin"},
            ),
            _load_branch(
                _EVENT,
                "inbox WHERE channel = $1 AND user_key = ANY($2::text[]) AND status = 'pending'",
                {c: c for c in EVENT_COLUMNS},
            ),
            _load_branch(
                _UNSENT,
                "outbox WHERE channel = $1 AND recipient = ANY($2::text[]) "
                "AND status IN ('pending', 'sending')",
                {"id": "id", "user_key": "recipient"},
            ),
            _load_branch(_FLOW, "flow WHERE $3", {"flow": "id", "version": "current_version_id"}),
        ]
    )
    + " ORDER BY 1, 2"
)
_CONV_VERSIONED = f"{', '.join(CONVERSATION_COLUMNS)}, xmin"  # a conversation, its version
_PG_CONVERSATIONS = (
    f"SELECT {_CONV_VERSIONED} FROM conversation WHERE channel = $1 AND user_key = ANY($2::text[])"
)

# Messages marked sent (id, when, the platform's id), those still claimed.
_PG_SENT = (
    "UPDATE outbox SET status = 'sent', sent_at = y.at, platform_message_id = y.pid, "
    "last_error = NULL FROM unnest(${0}::int[], ${1}::timestamptz[], ${2}::text[]) "
    "AS y(id, at, pid) WHERE outbox.id = y.id AND outbox.status = 'sending'"
)

# A PostgreSQL batch's writes in one statement, which commits them (one round trip, no
# BEGIN nor COMMIT) unless the batch began a transaction for its table work: the
# conversations' states, each only over the version of its row the batch read (`s`); the
# events handled marked done (`d`: through the partial index of the pending ones, whatever
# plan a new database's empty inbox gave it); the ratings stored with the batch (`r`, `a`:
# their answers found by dossier, one rating per dossier); the outgoing messages, their
# ids returned (`m`); the messages the writer was told were sent meanwhile (`x`). A state
# written meanwhile by another process, or a dossier rated meanwhile, fails the whole
# statement (hailong_conflict, migration 0010): nothing of the batch is written, and it
# is run again.
_PG_WRITE = (
    "WITH s AS (UPDATE conversation SET lang = u.lang, flow_version_id = u.version, "
    "step = u.step, vars = u.vars::json, updated_at = u.at FROM unnest($1::text[], $2::int[], "
    "$3::text[], $4::text[], $5::timestamptz[], $6::int[], $7::xid[]) AS u(lang, version, "
    "step, vars, at, id, seen) WHERE conversation.id = u.id AND conversation.xmin = u.seen "
    "RETURNING conversation.id), "
    "d AS (UPDATE inbox SET status = 'done', processed_at = $8 WHERE status = 'pending' "
    "AND id = ANY($9::int[])), "
    f"r AS (INSERT INTO rating ({', '.join(RATING_INSERT)}) SELECT * FROM unnest($10::int[], "
    "$11::int[], $12::text[], $13::text[], $14::timestamptz[]) "
    "ON CONFLICT (dossier_id) DO NOTHING RETURNING id, dossier_id), "
    f"a AS (INSERT INTO rating_answer (rating_id, {', '.join(ANSWER_INSERT[1:])}) "
    "SELECT r.id, t.c, t.v, t.l, t.k FROM unnest($15::int[], $16::text[], $17::int[], "
    "$18::text[], $19::text[]) AS t(dossier, c, v, l, k) JOIN r ON r.dossier_id = t.dossier), "
    f"m AS (INSERT INTO outbox ({', '.join(OUTBOX_INSERT)}) SELECT c, r, v, b::json, s, a, n, "
    "l, t FROM unnest($20::text[], $21::text[], $22::int[], $23::text[], $24::text[], "
    "$25::int[], $26::timestamptz[], $27::timestamptz[], $28::timestamptz[]) WITH ORDINALITY "
    "AS m(c, r, v, b, s, a, n, l, t, i) ORDER BY i RETURNING id), "
    f"x AS ({_PG_SENT.format(29, 30, 31)}) "
    "SELECT id FROM m UNION ALL SELECT hailong_conflict('a conversation was written, or a "
    "dossier rated, since the batch read it') "
    "WHERE (SELECT count(*) FROM s) <> cardinality($6::int[]) "
    "OR (SELECT count(*) FROM r) <> cardinality($10::int[])"
)


# ---------------------------------------------------------------- SQLite (sqlite3 calls)


def _sqlite_rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


Started = tuple[list[Any], list[Any], list[Any], list[Any]]


def _sqlite_begin(
    conn: sqlite3.Connection, keys: list[Key], new: dict[str, Any], queued: Queued
) -> tuple[Started, list[list[Any]] | Exception]:
    """Begin the batch's transaction with the writer's queued writes; the rows it starts
    from (conversations that do not exist yet are created), and what each queued insert
    stored, or the failure of the queued writes (undone, theirs, not the batch's)."""
    if conn.in_transaction:  # left over by a batch that could not roll back
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    stored: list[list[Any]] | Exception = []
    if queued:
        conn.execute("SAVEPOINT queued")
        try:
            stored = _sqlite_queued_writes(conn, queued)
        except Exception as exc:
            if sqlite_driver.is_busy(exc):
                raise
            conn.execute("ROLLBACK TO queued")
            stored = exc
        conn.execute("RELEASE queued")
    convs: list[Any] = []
    events: list[Any] = []
    unsent: list[Any] = []
    for channel, users in _groups(keys).items():
        where = f"channel = ? AND user_key IN ({_marks(len(users))})"
        found = _sqlite_rows(conn, f"{_CONV_SELECT} WHERE {where}", (channel, *users))
        missing = set(users) - {row[2] for row in found}
        for user_key in missing:
            citizen = conn.execute("INSERT INTO citizen (created_at) VALUES (?)", (new["at"],))
            conn.execute(
                "INSERT INTO conversation (channel, user_key, citizen_id, lang, vars, "
                "started_at, updated_at) VALUES (?, ?, ?, ?, '{}', ?, ?)",
                (channel, user_key, citizen.lastrowid, new["lang"], new["at"], new["at"]),
            )
        if missing:
            found += _sqlite_rows(
                conn,
                f"{_CONV_SELECT} WHERE channel = ? AND user_key IN ({_marks(len(missing))})",
                (channel, *missing),
            )
        convs += found
        events += _sqlite_rows(
            conn,
            f"{_EVENT_SELECT} WHERE {where} AND status = 'pending' ORDER BY id",
            (channel, *users),
        )
        unsent += [
            (channel, *row)
            for row in _sqlite_rows(
                conn,
                "SELECT recipient, id FROM outbox WHERE channel = ? AND recipient IN "
                f"({_marks(len(users))}) AND status IN ('pending', 'sending')",
                (channel, *users),
            )
        ]
    pointers = _sqlite_rows(conn, "SELECT id, current_version_id FROM flow")
    return (convs, events, pointers, unsent), stored


def _sqlite_write(
    conn: sqlite3.Connection,
    states: list[tuple[Any, ...]],
    done: list[int],
    done_at: Any,
    failures: list[tuple[Any, ...]],
    messages: list[tuple[Any, ...]],
) -> list[int]:
    if states:
        conn.executemany(_SET_STATE.format(*"??????"), states)
    if done:
        conn.execute(
            f"UPDATE inbox SET status = 'done', processed_at = ? WHERE id IN ({_marks(len(done))})",
            (done_at, *done),
        )
    if failures:
        conn.executemany(_SET_FAILURE.format(*"?????"), failures)
    insert = (
        f"INSERT INTO outbox ({', '.join(OUTBOX_INSERT)}) VALUES ({_marks(len(OUTBOX_INSERT))})"
    )
    ids = [conn.execute(insert, row).lastrowid for row in messages]
    conn.execute("COMMIT")
    return ids  # type: ignore[return-value]


def _sqlite_store(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[Any]:
    one = f"({_marks(len(INBOX_INSERT))})"
    return _sqlite_rows(
        conn,
        f"INSERT INTO inbox ({', '.join(INBOX_INSERT)}) VALUES {', '.join([one] * len(rows))} "
        "ON CONFLICT (channel, platform_id) DO NOTHING RETURNING channel, platform_id",
        [v for row in rows for v in row],
    )


def _sqlite_sent(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.executemany(_SET_SENT.format("?", "?", "?"), rows)


def _sqlite_queued(conn: sqlite3.Connection, queued: Queued) -> list[list[Any]]:
    """The writes `Writer` queued, in one transaction; for each inbox insert, the
    (channel, platform id) it stored."""
    if conn.in_transaction:  # left over by a batch that could not roll back
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _sqlite_queued_writes(conn, queued)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found


def _sqlite_queued_writes(conn: sqlite3.Connection, queued: Queued) -> list[list[Any]]:
    found = [_sqlite_store(conn, rows) for rows, _ in queued.inbox]
    for rows, _ in queued.sent:
        _sqlite_sent(conn, rows)
    return found


def _sqlite_rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


# ---------------------------------------------------------------- the writer


@dataclass
class Queued:
    """Writes waiting for a batch: inbox inserts and sent marks (converted rows) waiting
    for SQLite's write lock, sent marks for a PostgreSQL batch's last statement; each with
    the future of the caller waiting for its commit."""

    inbox: list[tuple[list[tuple[Any, ...]], asyncio.Future[list[Any]]]] = field(
        default_factory=list
    )
    sent: list[tuple[list[tuple[Any, ...]], asyncio.Future[None]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.inbox or self.sent)

    def settle(self, outcome: list[list[Any]] | Exception) -> None:
        """Tell the callers: what each insert stored, or the failure of them all."""
        futures = [f for _, f in self.inbox] + [f for _, f in self.sent]
        for i, future in enumerate(futures):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[i] if i < len(self.inbox) else None)


class Writer:
    """Short transactions of the message path on a connection of their own."""

    def __init__(
        self,
        url: str,
        is_sqlite: bool,
        write_lock: Any,
        pragmas: list[str],
        checkpoint_every: float = CHECKPOINT_EVERY,
    ) -> None:
        self.url = url
        self.is_sqlite = is_sqlite
        self._lock = write_lock
        self._pragmas = pragmas
        self._sqlite: sqlite_driver.InlineConnection | None = None
        self._pg: asyncpg.Pool | None = None
        # SQLite: writes waiting for the lock, batches waiting for it, the task that
        # makes the writes when no batch does. PostgreSQL: sent marks waiting for the
        # running batch's last statement, and the batches running.
        self._queued = Queued()
        self.batches_waiting = 0
        self.batches_running = 0
        self._batch_ended = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        # SQLite: WAL checkpoints, on a connection of their own, in its thread.
        self.checkpoint_every = checkpoint_every
        self._unchecked = False  # committed since the last checkpoint began
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoints: aiosqlite.Connection | None = None

    def take(self) -> Queued:
        """The queued writes, for a batch that holds the write lock to make first."""
        queued, self._queued = self._queued, Queued()
        return queued

    async def _enqueue(self, kind: str, rows: list[tuple[Any, ...]]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        getattr(self._queued, kind).append((rows, future))
        self._start_flusher()
        return await future

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            flush = self._flush() if self.is_sqlite else self._pg_flush()
            self._flusher = asyncio.create_task(flush, name="message-writer")

    def batch_started(self) -> None:
        """PostgreSQL: a batch runs; its last statement takes the sent marks waiting."""
        self.batches_running += 1

    def batch_ended(self) -> None:
        self.batches_running -= 1
        self._batch_ended.set()

    def take_sent(self) -> Queued:
        """PostgreSQL: the sent marks waiting, for a batch's last statement to make."""
        queued, self._queued = self._queued, Queued()
        return queued

    def give_back(self, queued: Queued) -> None:
        """Sent marks a batch took and could not make: made by the writer instead."""
        self._queued.sent[:0] = queued.sent
        if self._queued:
            self._start_flusher()

    async def _pg_flush(self) -> None:
        """PostgreSQL: sent marks go with the last statement of the batch running, if one
        is (one commit fewer); else, or when it ended without them, in a statement of
        their own."""
        while self._queued:
            if self.batches_running:
                self._batch_ended.clear()
                await self._batch_ended.wait()
                continue
            queued = self.take_sent()
            try:
                await self._pg_sent([row for rows, _ in queued.sent for row in rows])
                outcome: list[list[Any]] | Exception = []
            except Exception as exc:
                outcome = exc
            queued.settle(outcome)

    async def _flush(self) -> None:
        """Make the queued writes, unless a batch waiting for the lock does first."""
        while self._queued:
            async with self._lock:
                if self.batches_waiting:
                    continue  # the lock goes to the batch (first in line), which makes them
                queued = self.take()
                if not queued:
                    continue
                try:
                    conn = await self._sqlite_conn()
                    outcome: Any = await sqlite_driver.run(conn, _sqlite_queued, queued)
                    self.committed()
                except Exception as exc:
                    outcome = exc
                queued.settle(outcome)

    def committed(self) -> None:
        """A transaction of the message path's SQLite connections committed: the WAL is
        checkpointed within `checkpoint_every` seconds."""
        self._unchecked = True
        if self._checkpointer is None or self._checkpointer.done():
            self._checkpointer = asyncio.create_task(self._checkpoint(), name="sqlite-checkpoint")

    async def _checkpoint(self) -> None:
        while self._unchecked:
            await asyncio.sleep(self.checkpoint_every)
            self._unchecked = False
            try:
                if self._checkpoints is None:
                    self._checkpoints = await aiosqlite.connect(self._path, isolation_level=None)
                # PASSIVE: what it can without waiting for a reader or the writer.
                await self._checkpoints.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as exc:
                log.warning("SQLite WAL checkpoint failed; trying again later: %r", exc)
                self._unchecked = True

    @property
    def _path(self) -> str:
        return make_url(self.url).database or ""

    async def _sqlite_conn(self) -> sqlite_driver.InlineConnection:
        if self._sqlite is None:
            conn = await sqlite_driver.inline_connect(self._path, isolation_level=None)
            for pragma in self._pragmas:
                await conn.execute(pragma)
            self._sqlite = conn
        return self._sqlite

    async def _pg_pool(self) -> asyncpg.Pool:
        if self._pg is None:
            self._pg = await asyncpg.create_pool(
                self.url.replace("postgresql+asyncpg://", "postgresql://", 1),
                min_size=1,
                max_size=4,
                init=_pg_codecs,
                reset=_pg_unchanged,
            )
        return self._pg

    async def store_inbox(self, rows: list[dict[str, Any]]) -> set[Key]:
        """Insert incoming events, skipping those already stored; the (channel, platform
        id) of the new ones."""
        if not rows:
            return set()
        if self.is_sqlite:
            found = await self._enqueue("inbox", [SQLITE.inbox_row(r) for r in rows])
            return {(c, p) for c, p in found}
        pool = await self._pg_pool()
        cols = INBOX_INSERT
        columns = _columns([PG.inbox_row(r) for r in rows], len(cols))
        async with pool.acquire() as conn:
            found = await conn.fetch(
                f"INSERT INTO inbox ({', '.join(cols)}) SELECT * FROM unnest("
                "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
                "$7::int[], $8::text[], $9::timestamptz[], $10::text[], $11::int[]) "
                "ON CONFLICT (channel, platform_id) DO NOTHING RETURNING channel, platform_id",
                *columns,
            )
        return {(r["channel"], r["platform_id"]) for r in found}

    async def record_sent(self, sent: list[tuple[int, datetime, str | None]]) -> None:
        """Mark sent messages (id, when, the platform's id) that are still claimed."""
        if not sent:
            return
        if self.is_sqlite:
            await self._enqueue("sent", [(SQLITE.outbox_time(at), pid, i) for i, at, pid in sent])
            return
        await self._enqueue("sent", sent)

    async def _pg_sent(self, sent: list[tuple[Any, ...]]) -> None:
        pool = await self._pg_pool()
        async with pool.acquire() as conn:  # one statement: all of them or none
            await conn.execute(_PG_SENT.format(1, 2, 3), *_columns(sent, 3))

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._checkpointer is not None:
            self._checkpointer.cancel()  # closing the last connection checkpoints anyway
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            self._checkpointer = None
        if self._checkpoints is not None:
            await self._checkpoints.close()
            self._checkpoints = None
        if self._sqlite is not None:
            await self._sqlite.close()
            self._sqlite = None
        if self._pg is not None:
            await self._pg.close()
            self._pg = None


async def _pg_unchanged(conn: asyncpg.Connection) -> None:
    """The writer's connections change no session state: nothing to reset when one goes
    back to the pool (asyncpg's default reset is one more round trip every time)."""


async def _pg_codecs(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "json", encoder=str.encode, decoder=jsonio.loads, schema="pg_catalog", format="binary"
    )


# ---------------------------------------------------------------- inside a batch


class Batch:
    """The message path's statements of one batch, on `conn` (a connection of
    `Database.batch()`): `load` starts it, `write` ends it, committing what it did,
    `rollback` undoes what it did after a failure. The ORM session of the batch's table
    work runs on the same connection.

    On SQLite the batch is one transaction, from `load` (BEGIN IMMEDIATE: the write lock)
    to `write`. On PostgreSQL nothing is locked: `load` reads outside any transaction, and
    `write` is one statement, its own transaction, which writes each conversation's state
    only over the version the batch read (else it raises `Conflict`, having written
    nothing). Table work first asks for a transaction (`begin`), which `write` then
    commits; ratings can wait for `write` without one (`defer_rating`)."""

    def __init__(
        self, conn: AsyncConnection, is_sqlite: bool, writer: Writer | None = None
    ) -> None:
        self.conn = conn
        self.is_sqlite = is_sqlite
        self.writer = writer  # SQLite: its queued writes are made first
        self._driver: Any = None
        self._open = False
        # SQLite: the writer's queued writes this transaction makes, and what they stored.
        self._queued = Queued()
        self._stored: list[list[Any]] = []
        # PostgreSQL: ratings waiting for the last statement, or for the transaction.
        self._ratings: list[DeferredRating] = []

    async def _raw(self) -> Any:
        if self._driver is None:
            self._driver = (await self.conn.get_raw_connection()).driver_connection
        return self._driver

    async def rollback(self) -> None:
        """Undo what the batch did, if anything is left to undo (after a failure)."""
        self._ratings.clear()
        if not self._open:
            return
        self._open = False
        driver = await self._raw()
        if self.is_sqlite:
            try:
                await driver._execute(_sqlite_rollback, driver._conn)
            finally:
                await self._queued_alone(driver)
        elif driver.is_in_transaction():
            await driver.execute("ROLLBACK")

    async def begin(self) -> None:
        """A transaction for the batch's table work, which `write` commits with the rest:
        on SQLite the batch is in one already; on PostgreSQL it begins here, the ratings
        that were waiting for the last statement stored first."""
        if self.is_sqlite:
            return
        conn: asyncpg.Connection = await self._raw()
        if conn.is_in_transaction():
            return
        await conn.execute("BEGIN")
        if self._ratings:
            await self._pg_write(conn, Changes(), None, Queued())

    def defer_rating(self, rating: DeferredRating) -> bool:
        """Keep a rating for the batch's last statement (PostgreSQL, outside a
        transaction): True when it is kept, False when the caller stores it now (also a
        second rating of a dossier this batch rates: stored now, it is told it is one)."""
        if self.is_sqlite or self._driver is None or self._driver.is_in_transaction():
            return False
        dossier = rating.values["dossier_id"]
        if any(r.values["dossier_id"] == dossier for r in self._ratings):
            return False
        self._ratings.append(rating)
        return True

    async def load(self, keys: list[Key], lang: str, now: datetime) -> Loaded:
        """The conversations (created for a first message; locked on SQLite), their
        pending events, the flows' current versions, and the recipients' unsent messages;
        `keys` are one or more (a batch is never empty)."""
        out = Loaded()
        self._open = True
        if self.is_sqlite:
            aio = await self._raw()
            if self.writer is not None:
                self._queued = self.writer.take()
            new = {"lang": lang, "at": SQLITE.conv_time(now)}
            (convs, events, pointers, unsent), stored = await sqlite_driver.run(
                aio, _sqlite_begin, keys, new, self._queued
            )
            if isinstance(stored, Exception):
                self._settle(stored)
            else:
                self._stored = stored
            conv_rows = [SQLITE.conversation(r) for r in convs]
            event_rows = [SQLITE.event(r) for r in events]
        else:
            conv_rows, event_rows, pointers, unsent = await self._pg_load(keys, lang, now)
        for c in conv_rows:
            out.conversations[(c.channel, c.user_key)] = c
        for e in event_rows:
            out.events[(e.channel, e.user_key)].append(e)
        out.pointers = {flow: version for flow, version in pointers}
        for channel, recipient, message_id in unsent:
            out.unsent[(channel, recipient)].append(message_id)
        return out

    def _settle(self, outcome: list[list[Any]] | Exception) -> None:
        """Tell the writer's callers what became of their writes."""
        queued, self._queued = self._queued, Queued()
        queued.settle(outcome)

    async def _queued_alone(self, aio: Any) -> None:
        """The writer's queued writes, undone with the batch that made them, in a
        transaction of their own: their fate is theirs, not the batch's."""
        if not self._queued:
            return
        try:
            outcome: list[list[Any]] | Exception = await sqlite_driver.run(
                aio, _sqlite_queued, self._queued
            )
        except Exception as exc:
            outcome = exc
        except BaseException:  # cancelled while waiting for another process's lock
            self._settle(RuntimeError("cancelled"))
            raise
        self._settle(outcome)
        if self.writer is not None and not isinstance(outcome, Exception):
            self.writer.committed()

    async def _pg_load(
        self, keys: list[Key], lang: str, now: datetime
    ) -> tuple[list[ConversationRow], list[EventRow], list[Any], list[Any]]:
        conn: asyncpg.Connection = await self._raw()
        if conn.is_in_transaction():  # left over by a batch that could not roll back
            await conn.execute("ROLLBACK")
        convs: list[ConversationRow] = []
        events: list[EventRow] = []
        unsent: list[Any] = []
        pointers: list[Any] = []
        for n, (channel, users) in enumerate(_groups(keys).items()):
            rows = await conn.fetch(_PG_LOAD, channel, users, n == 0)
            found = [
                _pg_conversation(r[1:_CONV_END], r[_ROW_VERSION]) for r in rows if r[0] == _CONV
            ]
            known = {c.user_key for c in found}
            if missing := [u for u in users if u not in known]:
                found += await self._pg_create(conn, channel, missing, lang, now)
            convs += found
            # A conversation made just now had its events read in the same statement,
            # before it existed.
            for r in rows:
                if r[0] == _EVENT:
                    events.append(PG.event([r[c] for c in _EVENT_AT]))
                elif r[0] == _UNSENT:
                    unsent.append((channel, r[_USER], r[_ID]))
                elif r[0] == _FLOW:
                    pointers.append((r[_FLOW_ID], r[_FLOW_VERSION]))
        return convs, events, pointers, unsent

    async def _pg_create(
        self, conn: asyncpg.Connection, channel: str, users: list[str], lang: str, now: datetime
    ) -> list[ConversationRow]:
        """Conversations for first messages, each with a citizen of its own, in a
        transaction of their own; one another process made meanwhile is read instead."""
        async with conn.transaction():
            citizens = await conn.fetch(
                "INSERT INTO citizen (created_at) SELECT $1::timestamptz FROM "
                "generate_series(1, $2) RETURNING id",
                now,
                len(users),
            )
            made = await conn.fetch(
                "INSERT INTO conversation (channel, user_key, citizen_id, lang, vars, "
                "started_at, updated_at) SELECT $1, u, c, $4, '{}'::json, $5, $5 FROM "
                "unnest($2::text[], $3::int[]) AS t(u, c) "
                f"ON CONFLICT (channel, user_key) DO NOTHING RETURNING {_CONV_VERSIONED}",
                channel,
                users,
                [r["id"] for r in citizens],
                lang,
                now,
            )
            used = {r["citizen_id"] for r in made}
            if unused := [r["id"] for r in citizens if r["id"] not in used]:
                await conn.execute("DELETE FROM citizen WHERE id = ANY($1::int[])", unused)
        if others := sorted(set(users) - {r["user_key"] for r in made}):
            made += await conn.fetch(_PG_CONVERSATIONS, channel, others)
        width = len(CONVERSATION_COLUMNS)
        return [_pg_conversation(r[:width], r[width]) for r in made]

    async def write(self, changes: Changes, now: datetime) -> list[int]:
        """States, inbox marks and outgoing messages, and commit; the messages' ids, in
        order."""
        if self.is_sqlite:
            aio = await self._raw()
            c = SQLITE
            ids = await aio._execute(
                _sqlite_write,
                aio._conn,
                [c.state(conv) for conv in changes.conversations],
                changes.done,
                c.inbox_time(now),
                [
                    (
                        f["attempts"],
                        f["error"],
                        f["status"],
                        c.inbox_time(f["processed_at"]),
                        f["id"],
                    )
                    for f in changes.failures
                ],
                [c.outbox_row(m) for m in changes.messages],
            )
            self._open = False
            self._settle(self._stored)
            if self.writer is not None:
                self.writer.committed()
            return ids  # type: ignore[no-any-return]
        conn: asyncpg.Connection = await self._raw()
        if changes.failures:  # rare: with the rest, in a transaction
            await self.begin()
            await conn.executemany(
                _SET_FAILURE.format("$1", "$2", "$3", "$4", "$5"),
                [
                    (f["attempts"], f["error"], f["status"], f["processed_at"], f["id"])
                    for f in changes.failures
                ],
            )
        sent = self.writer.take_sent() if self.writer is not None else Queued()
        try:
            ids = await self._pg_write(conn, changes, now, sent)
            if conn.is_in_transaction():
                await conn.execute("COMMIT")
        except BaseException:
            if self.writer is not None:
                self.writer.give_back(sent)
            raise
        sent.settle([])
        self._open = False
        return ids

    async def _pg_write(
        self, conn: asyncpg.Connection, changes: Changes, now: datetime | None, sent: Queued
    ) -> list[int]:
        """_PG_WRITE with the batch's changes, the ratings waiting for it and the sent
        marks the writer was given; the messages' ids, in order."""
        states = [(*PG.state(c), c.row_version) for c in changes.conversations]
        ratings, self._ratings = self._ratings, []
        answers = [(r.values["dossier_id"], *_answer(a)) for r in ratings for a in r.answers]
        rows = [PG.outbox_row(m) for m in changes.messages]
        try:
            ids = await conn.fetch(
                _PG_WRITE,
                *_columns(states, STATE_WIDTH + 1),
                PG.inbox_time(now),
                changes.done,
                *_columns([PG.rating_row(r.values) for r in ratings], len(RATING_INSERT)),
                *_columns(answers, len(ANSWER_INSERT)),
                *_columns(rows, len(OUTBOX_INSERT)),
                *_columns([mark for marks, _ in sent.sent for mark in marks], 3),
            )
        except asyncpg.SerializationError as exc:
            raise Conflict(str(exc)) from exc
        # Ids come from the sequence in the order of insertion, which ORDER BY i sets.
        return sorted(r["id"] for r in ids)


def _answer(a: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(a[c] for c in ANSWER_INSERT[1:])


def _pg_conversation(values: Sequence[Any], row_version: int) -> ConversationRow:
    conv = PG.conversation(values)
    conv.row_version = row_version
    return conv
