"""status writes in place: no index on cases.updated_at, fill factors on PostgreSQL

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 15:10:00

A status change rewrote the case's row with a new updated_at, an indexed column, so on
PostgreSQL every one was a new row version with a new entry in each of the five indexes
of `cases`, three of them on random keys; no query reads that index. Without it a status
change touches no indexed column of `cases` or `work_orders`, nor a claim of `outbox`,
and with room left in their pages (fill factor) PostgreSQL rewrites the row in place
(HOT): no index entries at all.
The fill factor applies to pages written from now on; SQLite has none and ignores it.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index("ix_cases_updated")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE cases SET (fillfactor = 70)")
        op.execute("ALTER TABLE work_orders SET (fillfactor = 80)")
        op.execute("ALTER TABLE outbox SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE cases RESET (fillfactor)")
        op.execute("ALTER TABLE work_orders RESET (fillfactor)")
        op.execute("ALTER TABLE outbox RESET (fillfactor)")
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.create_index("ix_cases_updated", ["updated_at"], unique=False)
