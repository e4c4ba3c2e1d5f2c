"""Small statements both databases need in their own dialect (upserts, counters)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Counter


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
    stmt = _insert(session, table).values(**values).on_conflict_do_nothing(index_elements=conflict)
    result = await session.exec(stmt.returning(table.id))  # type: ignore[attr-defined]
    return result.scalar_one_or_none()


async def next_in_sequence(session: AsyncSession, name: str) -> int:
    """Atomically take the next number of a named sequence (1, 2, 3, …)."""
    stmt = _insert(session, Counter).values(name=name, value=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"], set_={"value": Counter.value + 1}
    ).returning(Counter.value)
    return int((await session.exec(stmt)).scalar_one())
