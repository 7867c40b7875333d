"""SQLAlchemy table definitions: the single source for the schema and its migrations.

SQLAlchemy Core rather than the ORM: the hot paths (claiming, completing, intake) are set
operations, and Core keeps them one statement each on both SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# PostgreSQL fill factors (revision 0008): room left in each page for the rows' later
# versions, so an update that changes no indexed column stays a HOT update. A case is
# rewritten at delivery and at each status change; a work order at each status change;
# an outbox row at its claim (its completion changes `state`, which the claim indexes hold).
CASES_FILLFACTOR = 70
WORK_ORDERS_FILLFACTOR = 80
OUTBOX_FILLFACTOR = 80

# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its 64-bit rowid.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator):
    """Always aware UTC in Python; timestamptz on PostgreSQL, ISO text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


cases = Table(
    "cases",
    metadata,
    Column("hub_id", String(64), primary_key=True),
    Column("source_system", String(64)),
    Column("source_id", String(128)),
    Column("service_code", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("department", String(64)),
    Column("version", Integer, nullable=False, default=1),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("sla_due", UTCDateTime),
    Column("token", String(64), unique=True),
    Column("body", JSON, nullable=False),  # the canonical case, requester excluded
    Column("requester", JSON),  # PII, kept apart so it can be encrypted or purged alone
    UniqueConstraint("source_system", "source_id"),
    # No index on updated_at or status (revision 0008): a status change then touches no
    # indexed column, and PostgreSQL rewrites the row in place (HOT) in the room the
    # fill factor leaves, with no new entry in any of the table's indexes.
    Index("ix_cases_service_requested", "service_code", "requested_at"),
    postgresql_with={"fillfactor": CASES_FILLFACTOR},
)

case_events = Table(
    "case_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", String(64), ForeignKey("cases.hub_id", ondelete="CASCADE"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(48), nullable=False),
    Column("level", String(16), nullable=False, default="info"),
    Column("actor", String(64), nullable=False, default="hub"),
    Column("source", String(64)),
    Column("department", String(64)),
    Column("message", Text, nullable=False, default=""),
    Column("detail", JSON, nullable=False, default=dict),
    Index("ix_case_events_case", "case_id", "id"),
    Index("ix_case_events_kind_at", "kind", "at"),
)

work_orders = Table(
    "work_orders",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", String(64), ForeignKey("cases.hub_id", ondelete="CASCADE"), nullable=False),
    Column("department", String(64), nullable=False),
    Column("work_order_type", String(64)),
    Column("external_id", String(128)),
    Column("raw_status", String(64)),
    Column("raw_status_text", Text),
    Column("mapped_status", String(16)),
    Column("delivery_state", String(16), nullable=False),
    Column("last_sequence", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("case_id", "department"),
    Index("ix_work_orders_external", "department", "external_id"),
    Index("ix_work_orders_state", "department", "delivery_state"),
    postgresql_with={"fillfactor": WORK_ORDERS_FILLFACTOR},
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", String(64), ForeignKey("cases.hub_id", ondelete="CASCADE"), nullable=False),
    Column("department", String(64), nullable=False),
    Column("operation", String(24), nullable=False),
    # Same key twice is the same delivery: intake and replays never enqueue it twice.
    Column("idempotency_key", String(160), nullable=False, unique=True),
    Column("payload", JSON, nullable=False, default=dict),
    Column("state", String(16), nullable=False),  # pending | done | dead | held
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("locked_until", UTCDateTime),
    Column("locked_by", String(128)),
    Column("last_error_class", String(32)),
    Column("last_error_message", Text),
    # Sticky: some attempt may have reached the department (its answer was lost, the
    # worker died, it failed in a way that is not a refusal), so a create looks its work
    # order up before creating. Survives a dead-letter replay, which resets `attempts`.
    Column("maybe_applied", Boolean, nullable=False, default=False, server_default=false()),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime),
    Index("ix_outbox_due", "state", "next_attempt_at", "id"),  # the claim's order
    Index("ix_outbox_case_dept", "case_id", "department", "id"),
    Index("ix_outbox_dept_due", "department", "state", "next_attempt_at", "id"),  # per dept
    postgresql_with={"fillfactor": OUTBOX_FILLFACTOR},
)

inbound_events = Table(
    "inbound_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("department", String(64), nullable=False),
    Column("external_event_id", String(160), nullable=False),
    Column("external_id", String(128)),
    Column("case_id", String(64)),
    Column("raw_code", String(64), nullable=False),
    Column("raw_text", Text),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("sequence", String(64)),
    Column("received_at", UTCDateTime, nullable=False),
    Column("outcome", String(24)),  # applied | no_op | refused | unmapped | ignored | orphan
    Column("payload", JSON, nullable=False, default=dict),
    UniqueConstraint("department", "external_event_id"),
    Index("ix_inbound_case", "case_id"),
)

sync_cursors = Table(
    "sync_cursors",
    metadata,
    Column("department", String(64), primary_key=True),
    Column("stream", String(32), primary_key=True, default="status"),
    Column("watermark", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
)

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job", String(96), nullable=False),
    Column("slot", String(64), nullable=False),
    Column("claimed_by", String(128), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("outcome", String(24)),
    Column("detail", JSON, nullable=False, default=dict),
    UniqueConstraint("job", "slot"),
)

department_state = Table(
    "department_state",
    metadata,
    Column("department", String(64), primary_key=True),
    Column("paused", Boolean, nullable=False, default=False),
    Column("pause_reason", Text),
    Column("circuit", String(16), nullable=False, default="closed"),  # closed|open|half_open
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("opened_at", UTCDateTime),
    Column("retry_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    # Revision 0003: the cluster-wide token bucket (rate_limit_per_second). The refill time
    # is epoch seconds (a float) so the refill arithmetic is the same SQL on both stores.
    Column("tokens", Float),
    Column("tokens_at", Float),
)

# --------------------------------------------------------------------------- revision 0002

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(96), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),  # shown in listings; the key is not stored
    Column("key_hash", String(128), nullable=False, unique=True),
    Column("scopes", String(128), nullable=False, default="write"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("last_used_at", UTCDateTime),
)

# Every canonical status change of a case, in order: the Open311 servicerequestupdates feed
# (update_id = id) and the source of CRM callbacks.
status_updates = Table(
    "status_updates",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", String(64), ForeignKey("cases.hub_id", ondelete="CASCADE"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("old_status", String(16)),
    Column("status", String(16), nullable=False),
    Column("department", String(64)),
    Column("raw_code", String(64)),
    Column("description", Text),
    Column("media_url", Text),
    Column("closure_code", String(64)),
    Column("source", String(32), nullable=False),  # hub | poll | push | file | api | reconcile
    Index("ix_status_updates_at", "at"),
    Index("ix_status_updates_case", "case_id", "id"),
)

reconcile_runs = Table(
    "reconcile_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("department", String(64)),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("healed", Boolean, nullable=False, default=False),
    Column("counts", JSON, nullable=False, default=dict),
    Column("report", JSON, nullable=False, default=dict),
)

# --------------------------------------------------------------------------- revision 0005

# Department inputs an adapter refused (a quarantined file, a record it could not read), so
# an operator sees their history after a restart. Never the content, which may hold
# requester PII: only the input's name, its class, the reason and the digest of its bytes.
rejected_inputs = Table(
    "rejected_inputs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("department", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # RejectedInput.kind: a short fixed label
    Column("source", String(255), nullable=False),  # the input's (safe) file name or record id
    # sha256 hex of the refused bytes; '' when the adapter refused the input unread. Not
    # NULL: NULLs never conflict, so every re-poll of an unread input would add a row.
    Column("digest", String(64), nullable=False, default=""),
    Column("reason", Text, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),  # the hub's clock when first recorded
    # The same input seen again (a re-polled file, an overlapping poll) is one row.
    UniqueConstraint("department", "kind", "source", "digest"),
    Index("ix_rejected_inputs_received", "department", "received_at"),
)
