"""outbox due index carries id, the claim's tie-break

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 16:00:00

The claim orders due rows by (next_attempt_at, id). With id in the index an ordered scan
serves that order directly and stops at LIMIT, instead of sorting every due row first,
which is what made claims grow with the backlog.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_due")
        batch_op.create_index("ix_outbox_due", ["state", "next_attempt_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_due")
        batch_op.create_index("ix_outbox_due", ["state", "next_attempt_at"], unique=False)
