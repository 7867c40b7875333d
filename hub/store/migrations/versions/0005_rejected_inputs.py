"""rejected department inputs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 10:00:00

Status sync stores what an adapter refused (a quarantined file, an unreadable record), one
row per (department, kind, source, digest), so a re-polled input is not counted twice.
A new table: no data to move.
"""

import sqlalchemy as sa
from alembic import op

import hub.store.tables

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rejected_inputs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("department", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received_at", hub.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_inputs")),
        sa.UniqueConstraint(
            "department",
            "kind",
            "source",
            "digest",
            name=op.f("uq_rejected_inputs_department_kind_source_digest"),
        ),
    )
    with op.batch_alter_table("rejected_inputs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_rejected_inputs_received", ["department", "received_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("rejected_inputs", schema=None) as batch_op:
        batch_op.drop_index("ix_rejected_inputs_received")
    op.drop_table("rejected_inputs")
