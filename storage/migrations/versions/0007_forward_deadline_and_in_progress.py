"""forward deadline; routed reports are "assigned", taken-up ones "in_progress"

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("report", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("forward_due_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )
        batch_op.create_index(batch_op.f("ix_report_forward_due_at"), ["forward_due_at"])
    # Before: "assigned" meant taken up by an official, "new" routed or not. Now a routed
    # report is "assigned" and a taken-up one "in_progress" (bot/reports.py).
    op.execute("UPDATE report SET status = 'in_progress' WHERE status = 'assigned'")
    op.execute("UPDATE report SET status = 'assigned' WHERE status = 'new' AND agency_id IS NOT NULL")


def downgrade() -> None:
    op.execute("UPDATE report SET status = 'new' WHERE status = 'assigned'")
    op.execute("UPDATE report SET status = 'assigned' WHERE status = 'in_progress'")
    with op.batch_alter_table("report", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_forward_due_at"))
        batch_op.drop_column("forward_due_at")
