"""outbox index per department in the claim's order

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 23:58:00

Workers claim one department at a time, ordered by (next_attempt_at, id). With
(department, state) alone PostgreSQL, right after a bulk intake (no statistics yet),
read every pending row of the department, probed each for an earlier open operation and
sorted them: 220 ms per claim at 20,000 queued rows, growing with the backlog. The wider
index serves the order directly and the scan stops at LIMIT (15 ms, with or without
statistics). It keeps (department, state) as its prefix for the queue-depth queries.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_dept_state")
        batch_op.create_index(
            "ix_outbox_dept_due", ["department", "state", "next_attempt_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_dept_due")
        batch_op.create_index("ix_outbox_dept_state", ["department", "state"], unique=False)
