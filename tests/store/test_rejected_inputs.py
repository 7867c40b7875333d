"""Rejected department inputs in the store (record once, summary, recent), the work-order
queries status sync and reconciliation start from, and migration 0005, on SQLite and on
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import inspect, select

from hub.adapters import RejectedInput
from hub.model import WorkOrder
from hub.store import tables as t
from hub.store.db import make_engine
from hub.store.migrate import alembic_config, current_revision, head_revision, upgrade
from hub.store.repository import RejectedSummary
from hub.store.uow import UnitOfWork
from tests.store.test_store import a_case

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DIGEST = "ab" * 32


def refused(
    source: str, kind: str = "bad_file", reason: str = "truncated", digest: str | None = DIGEST
) -> RejectedInput:
    return RejectedInput(
        department="sanitation", source=source, kind=kind, reason=reason, digest=digest
    )


def record(engine, department: str, inputs: list[RejectedInput], now: datetime) -> int:
    with UnitOfWork(engine) as uow:
        stored = uow.rejected.record(department, inputs, now)
        uow.commit()
    return stored


def row_count(engine) -> int:
    with UnitOfWork(engine) as uow:
        return len(uow.connection.execute(select(t.rejected_inputs.c.id)).all())


# --------------------------------------------------------------------------- record


def test_the_same_input_is_stored_once(engine) -> None:
    unread = refused("notes.txt", "unexpected_file", "not an ACK or status file", None)
    first = [refused("C_1.csv"), unread, refused("C_1.csv")]  # a duplicate within the page
    assert record(engine, "sanitation", first, T0) == 2
    # Polled again (an overlapping poll, the file listed again): nothing new, not counted.
    assert record(engine, "sanitation", [unread, refused("C_1.csv")], T0 + timedelta(hours=1)) == 0
    assert row_count(engine) == 2
    with UnitOfWork(engine) as uow:
        [summary] = uow.rejected.summary(T0 + timedelta(hours=2)).values()
        entries = uow.rejected.recent("sanitation")
    assert (summary.total, summary.last_24h) == (2, 2)
    assert {e.received_at for e in entries} == {T0}  # the first sighting is kept


def test_other_bytes_class_or_department_is_another_input(engine) -> None:
    assert record(engine, "sanitation", [refused("C_1.csv")], T0) == 1
    again = [
        refused("C_1.csv", digest="cd" * 32),  # a new upload under the same name
        refused("C_1.csv", kind="duplicate_file"),
        refused("C_2.csv"),
    ]
    assert record(engine, "sanitation", again, T0) == 3
    assert record(engine, "publicworks", [refused("C_1.csv")], T0) == 1
    assert row_count(engine) == 5


def test_nothing_is_stored_without_commit_and_an_empty_page_writes_nothing(engine) -> None:
    with UnitOfWork(engine) as uow:
        assert uow.rejected.record("sanitation", [refused("C_1.csv")], T0) == 1
    assert record(engine, "sanitation", [], T0) == 0
    assert row_count(engine) == 0


def test_over_long_names_and_digests_are_cut_to_the_columns(engine) -> None:
    long = refused("x" * 400 + ".csv", reason="r" * 5000, digest="f" * 80)
    assert record(engine, "sanitation", [long], T0) == 1
    assert record(engine, "sanitation", [long], T0) == 0  # cut the same way: still one input
    with UnitOfWork(engine) as uow:
        [entry] = uow.rejected.recent("sanitation")
    assert (len(entry.source), len(entry.reason), entry.digest) == (255, 2000, "f" * 64)


# --------------------------------------------------------------------------- reading


def test_summary_counts_the_last_day_and_names_the_latest(engine) -> None:
    now = T0 + timedelta(days=2)
    # Recorded out of time order: "latest" is by received_at, not by insertion.
    record(
        engine, "sanitation", [refused("new.csv", reason="empty file")], now - timedelta(hours=1)
    )
    record(engine, "sanitation", [refused("old.csv", reason="html")], now - timedelta(hours=30))
    record(engine, "sanitation", [refused("mid.csv", reason="fields")], now - timedelta(hours=5))
    record(engine, "sanitation", [refused("edge.csv")], now - timedelta(hours=24))  # not within
    record(engine, "publicworks", [refused("r-9", "malformed_record", "no id")], now)
    with UnitOfWork(engine) as uow:
        summary = uow.rejected.summary(now)
        only = uow.rejected.summary(now, "publicworks")
        none = uow.rejected.summary(now, "codeenforcement")
    assert summary["sanitation"] == RejectedSummary(
        "sanitation", 2, 4, now - timedelta(hours=1), "bad_file", "empty file"
    )
    assert summary["publicworks"] == RejectedSummary(
        "publicworks", 1, 1, now, "malformed_record", "no id"
    )
    assert set(only) == {"publicworks"} and none == {}


def test_recent_lists_newest_first_within_the_limit(engine) -> None:
    for hour, name in enumerate(["a.csv", "b.csv", "c.csv"]):
        record(engine, "sanitation", [refused(name)], T0 + timedelta(hours=hour))
    unread = refused("unsafe-name-0123", "unsafe_name", "unsafe file name", None)
    record(engine, "sanitation", [unread], T0 - timedelta(hours=1))
    with UnitOfWork(engine) as uow:
        two = uow.rejected.recent("sanitation", 2)
        every = uow.rejected.recent("sanitation", 10)
        assert uow.rejected.recent("publicworks") == []
        with pytest.raises(ValueError, match="at least 1"):
            uow.rejected.recent("sanitation", 0)
    assert [e.source for e in two] == ["c.csv", "b.csv"]
    assert [e.source for e in every] == ["c.csv", "b.csv", "a.csv", "unsafe-name-0123"]
    assert every[0].digest == DIGEST and every[-1].digest is None  # unread: no digest
    assert (every[-1].kind, every[-1].reason) == ("unsafe_name", "unsafe file name")


# --------------------------------------------------------------------------- work orders


def test_oldest_and_first_work_order_of_a_department(engine) -> None:
    first, second = a_case(1), a_case(2)
    with UnitOfWork(engine) as uow:
        uow.cases.add(first)
        uow.cases.add(second)
        assert uow.work_orders.oldest_created_at("publicworks") is None
        assert uow.work_orders.first_created_at("publicworks") is None
        # Inserted first but created later (an import): the two questions differ.
        uow.work_orders.add(
            WorkOrder(case_id=first.hub_id, department="publicworks", created_at=T0)
        )
        earlier = T0 - timedelta(hours=3)
        uow.work_orders.add(
            WorkOrder(case_id=second.hub_id, department="publicworks", created_at=earlier)
        )
        uow.work_orders.add(
            WorkOrder(
                case_id=first.hub_id, department="sanitation", created_at=T0 - timedelta(days=9)
            )
        )
        uow.commit()
        assert uow.work_orders.oldest_created_at("publicworks") == earlier
        assert uow.work_orders.first_created_at("publicworks") == T0


def test_inbound_counts_per_outcome(engine) -> None:
    def event(n: int, outcome: str, department: str = "publicworks") -> dict:
        return {
            "department": department,
            "external_event_id": f"e-{n}",
            "external_id": None,
            "raw_code": "New",
            "raw_text": None,
            "occurred_at": T0,
            "sequence": None,
            "received_at": T0,
            "payload": {},
            "outcome": outcome,
            "case_id": None,
        }

    outcomes = ["applied", "applied", "orphan"]
    with UnitOfWork(engine) as uow:
        rows = [event(n, outcome) for n, outcome in enumerate(outcomes)]
        assert uow.inbound.record_many(rows) == {"e-0", "e-1", "e-2"}
        # e-1 seen before: its first outcome stands
        assert uow.inbound.record_many([event(1, "orphan"), event(3, "orphan")]) == {"e-3"}
        assert uow.inbound.record_many([event(9, "unmapped", "sanitation")]) == {"e-9"}
        uow.commit()
        assert uow.inbound.counts("publicworks") == {"applied": 2, "orphan": 2}
        assert uow.inbound.counts() == {"applied": 2, "orphan": 2, "unmapped": 1}


# --------------------------------------------------------------------------- migration


def test_migration_0005_adds_and_removes_the_table(db_url: str) -> None:
    command.downgrade(alembic_config(db_url), "0004")
    engine = make_engine(db_url)
    try:
        assert "rejected_inputs" not in inspect(engine).get_table_names()
        assert upgrade(db_url) == head_revision() == current_revision(db_url)
        inspector = inspect(engine)
        assert "rejected_inputs" in inspector.get_table_names()
        [unique] = inspector.get_unique_constraints("rejected_inputs")
        assert unique["column_names"] == ["department", "kind", "source", "digest"]
        assert record(engine, "sanitation", [refused("C_1.csv"), refused("C_1.csv")], T0) == 1
    finally:
        engine.dispose()
