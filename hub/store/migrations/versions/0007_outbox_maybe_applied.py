"""outbox.maybe_applied: a sticky "some attempt may have reached the department"

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 03:30:00

A create looked its work order up before every attempt after the first, and not at all
after a dead-letter replay (which resets `attempts`): a create dead-lettered after a lost
answer and then replayed could be created twice. The flag says when the lookup is due:
set by any attempt that was not a refusal (429, refused login, no connection) and by a
claim that finds an expired lease; a replay keeps it. Existing rows that were ever
attempted are marked, so nothing in flight at the upgrade loses its lookup.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("maybe_applied", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    outbox = sa.table("outbox", sa.column("attempts", sa.Integer), sa.column("maybe_applied"))
    op.execute(outbox.update().where(outbox.c.attempts > 0).values(maybe_applied=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("maybe_applied")
