"""Reads by a list of keys (a status page's cases, work orders and recorded events): the
same rows on both stores, whatever the list's length; on PostgreSQL one statement text
for every length (the list is one array parameter), so neither psycopg nor the server
parses a new statement per page."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.model import Case, WorkOrder
from hub.store.uow import UnitOfWork
from tests.statements import statements

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
N = 120  # more than psycopg's 50-parameter statement cache


@pytest.fixture
def stored(engine) -> list[Case]:
    cases = [
        Case(service_code="POTHOLE", source_system="crm", source_id=f"list-{i}") for i in range(N)
    ]
    with UnitOfWork(engine) as uow:
        uow.cases.add_many([(case, None) for case in cases])
        uow.work_orders.add_many(
            [
                WorkOrder(case_id=c.hub_id, department="publicworks", external_id=f"WO-{i}")
                for i, c in enumerate(cases)
            ]
        )
        uow.inbound.record_many([inbound(f"ev-{i}") for i in range(0, N, 2)])
        uow.commit()
    return cases


def inbound(event_id: str) -> dict:
    return {
        "department": "publicworks",
        "external_event_id": event_id,
        "external_id": None,
        "raw_code": "Closed",
        "raw_text": None,
        "occurred_at": T0,
        "sequence": None,
        "received_at": T0,
        "payload": {},
        "outcome": "orphan",
        "case_id": None,
    }


def read_all(uow: UnitOfWork, cases: list[Case], n: int) -> list[int]:
    ids = [c.hub_id for c in cases[:n]] + ["no-such-case"]
    externals = [f"WO-{i}" for i in range(n)] + ["WO-none"]
    events = [f"ev-{i}" for i in range(n)]
    return [
        len(uow.cases.get_many(ids)),
        len(uow.cases.versions(ids)),
        len(uow.work_orders.for_cases(ids)),
        len(uow.work_orders.by_external_ids("publicworks", externals)),
        len(uow.work_orders.by_external_ids("codeenforcement", externals)),
        len(uow.inbound.recorded("publicworks", events)),
    ]


def test_list_reads_find_exactly_the_listed_rows(engine, stored) -> None:
    with UnitOfWork(engine) as uow:
        assert read_all(uow, stored, 1) == [1, 1, 1, 1, 0, 1]
        assert read_all(uow, stored, 7) == [7, 7, 7, 7, 0, 4]
        assert read_all(uow, stored, N) == [N, N, N, N, 0, N // 2]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite: IN, expanded
def test_on_postgresql_a_list_read_is_one_statement_text_for_any_length(engine, stored) -> None:
    with UnitOfWork(engine) as uow:
        with statements(engine) as short:
            read_all(uow, stored, 3)
        with statements(engine) as long:
            read_all(uow, stored, N)
    assert short == long and all("ANY" in sql for sql in long)
