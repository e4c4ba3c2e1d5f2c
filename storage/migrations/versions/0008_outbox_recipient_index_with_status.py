"""outbox: a recipient's messages indexed by status too

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00

Finding a recipient's unsent messages (and a web chat's sent ones) read every message the
recipient was ever sent; with the status in the index they read only those.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_recipient")
        batch_op.create_index("ix_outbox_recipient", ["channel", "recipient", "status", "id"])


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_recipient")
        batch_op.create_index("ix_outbox_recipient", ["channel", "recipient", "id"])
