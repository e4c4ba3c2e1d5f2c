"""Small statements both databases need in their own dialect (upserts, counters)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Counter, Rating, RatingAnswer


def _insert(session: AsyncSession, table: type[SQLModel]) -> Any:
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table)


async def insert_ignore(
    session: AsyncSession, table: type[SQLModel], values: dict[str, Any], conflict: list[str]
) -> int | None:
    """Insert a row unless one with the same `conflict` columns exists.

    Returns the new row's id, or None when the row already existed (a duplicate).
    """
    stmt = _insert_ignore(table, tuple(sorted(values)), tuple(conflict))
    # On the session's connection: a Core statement needs none of the ORM's handling.
    result = await (await session.connection()).execute(stmt, values)
    return result.scalar_one_or_none()


@functools.cache
def _insert_ignore(
    table: type[SQLModel], columns: tuple[str, ...], conflict: tuple[str, ...]
) -> Any:
    """The statement, written once per shape. SQLAlchemy's dialect inserts with ON CONFLICT
    are compiled anew at every execution (they have no cache key); a text statement with
    typed parameters is compiled once, and both databases read it the same way."""
    t = table.__table__  # type: ignore[attr-defined]
    sql = _insert_ignore_sql(t.name, columns, conflict)
    return text(sql).bindparams(*(bindparam(c, type_=t.c[c].type) for c in columns))


def _insert_ignore_sql(table: str, columns: tuple[str, ...], conflict: tuple[str, ...]) -> str:
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT ({', '.join(conflict)}) DO NOTHING RETURNING id"
    )


_ANSWER = ("criterion", "value", "label", "counts_as")


async def insert_rating(
    session: AsyncSession, values: dict[str, Any], answers: list[dict[str, Any]]
) -> int | None:
    """A rating (`values`) with its answers (`_ANSWER` each), unless its dossier has one
    already; the new rating's id, or None. On PostgreSQL in one statement: inside a
    conversation batch every round trip waits for a turn of the event loop."""
    conn = await session.connection()
    if conn.dialect.name != "postgresql":
        rating_id = await insert_ignore(session, Rating, values, ["dossier_id"])
        if rating_id is not None:
            rows = [{"rating_id": rating_id, **a} for a in answers]
            await conn.execute(insert(RatingAnswer.__table__), rows)  # type: ignore[attr-defined]
        return rating_id
    columns = {k: [a[k] for a in answers] for k in _ANSWER}
    result = await conn.execute(_pg_rating(tuple(sorted(values))), {**values, **columns})
    return result.scalar_one_or_none()  # type: ignore[no-any-return]


@functools.cache
def _pg_rating(columns: tuple[str, ...]) -> Any:
    """The rating stored if new (`r`), and its answers with its id (`a`, run by PostgreSQL
    though nothing reads it: a data-modifying WITH always runs)."""
    rating = Rating.__table__  # type: ignore[attr-defined]
    answer = RatingAnswer.__table__  # type: ignore[attr-defined]
    sql = (
        f"WITH r AS ({_insert_ignore_sql(rating.name, columns, ('dossier_id',))}), "
        f"a AS (INSERT INTO {answer.name} (rating_id, {', '.join(_ANSWER)}) "
        f"SELECT r.id, {', '.join('t.' + k for k in _ANSWER)} FROM r, "
        f"unnest({', '.join(':' + k for k in _ANSWER)}) AS t({', '.join(_ANSWER)})) "
        "SELECT id FROM r"
    )
    return text(sql).bindparams(
        *(bindparam(c, type_=rating.c[c].type) for c in columns),
        *(bindparam(k, type_=postgresql.ARRAY(answer.c[k].type)) for k in _ANSWER),
    )


async def insert_new(
    session: AsyncSession, table: type[SQLModel], rows: list[dict[str, Any]], conflict: list[str]
) -> set[tuple[Any, ...]]:
    """Insert many rows in one statement, skipping those whose `conflict` columns exist.

    Returns the `conflict` values of the rows that were inserted (the new ones).
    """
    if not rows:
        return set()
    columns = table.__table__.c  # type: ignore[attr-defined]
    stmt = (
        _insert(session, table)
        .values(rows)
        .on_conflict_do_nothing(index_elements=conflict)
        .returning(*(columns[c] for c in conflict))
    )
    return {tuple(row) for row in await session.exec(stmt)}  # type: ignore[call-overload]


async def next_in_sequence(session: AsyncSession, name: str) -> int:
    """Atomically take the next number of a named sequence (1, 2, 3, …)."""
    stmt = _insert(session, Counter).values(name=name, value=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"], set_={"value": Counter.value + 1}
    ).returning(Counter.value)
    return int((await session.exec(stmt)).scalar_one())


def due_rows(table: type[SQLModel], column: Any, now: datetime, batch: int, pg: bool) -> Any:
    """The first `batch` rows of `table` due by `column` (<= now), oldest first, through the
    column's index; on PostgreSQL claimed with FOR UPDATE SKIP LOCKED, so processes
    working at once never take the same row (SQLite has one writer anyway)."""
    query = select(table).where(col(column) <= now).order_by(col(column)).limit(batch)
    return query.with_for_update(skip_locked=True) if pg else query


async def claim_due(
    s: AsyncSession, table: type[SQLModel], column: Any, now: datetime, batch: int, pg: bool
) -> list[Any]:
    """`due_rows`, claimed and detached from the session: the caller sets their fields and
    `save_columns` writes them back in one statement, instead of an ORM flush row by row."""
    due = list(await s.exec(due_rows(table, column, now, batch, pg)))
    for row in due:
        s.expunge(row)
    return due


async def save_columns(s: AsyncSession, rows: list[Any], columns: tuple[str, ...]) -> None:
    """Write `columns` of detached rows of one table back (one executemany, by id)."""
    if not rows:
        return
    table = type(rows[0]).__table__
    params = [{"_id": r.id, **{c: getattr(r, c) for c in columns}} for r in rows]
    await s.exec(update(table).where(table.c.id == bindparam("_id")), params=params)  # type: ignore[call-overload]
