"""PostgreSQL: hailong_conflict(), how a batch's one statement refuses to write over news

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 13:00:00

On PostgreSQL a conversation batch reads its conversations without locking them and
writes everything in one statement (storage/messages.py). When a conversation changed,
or a dossier was rated, since the batch read it, that statement must fail as a whole;
SQL has no way of its own to raise an error, so it calls this function, which raises a
serialization failure (SQLSTATE 40001). SQLite needs nothing: a batch holds its write
lock from its first statement to its last.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION hailong_conflict(what text) RETURNS integer
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = what;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION hailong_conflict(text)")
