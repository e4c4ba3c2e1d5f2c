"""inbox and outbox: partial indexes of the rows still waiting

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 14:30:00

A batch looks up its conversations' pending events and their unsent messages. The
indexes over every row hold them among all the rows ever handled, and a plan that
filters by user key instead of looking it up (PostgreSQL's, on tables too new to have
statistics) walked them all; these hold only the rows still waiting.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")
UNSENT = sa.text("status IN ('pending', 'sending')")


def upgrade() -> None:
    op.create_index(
        "ix_inbox_waiting",
        "inbox",
        ["channel", "user_key", "id"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.create_index(
        "ix_outbox_unsent",
        "outbox",
        ["channel", "recipient", "id"],
        postgresql_where=UNSENT,
        sqlite_where=UNSENT,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_unsent", table_name="outbox")
    op.drop_index("ix_inbox_waiting", table_name="inbox")
