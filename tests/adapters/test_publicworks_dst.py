"""Public works event ids across fall-back's repeated hour and across the upgrade that
changed their format (``{rid}:{status}:{naive local stamp}`` → the UTC instant).

New York, Sunday 2026-11-01: 01:30 EDT is 05:30Z, 01:30 EST is 06:30Z."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.publicworks.adapter import event_id
from hub.services.sync import APPLIED, DUPLICATE, NO_OP, StatusSync
from tests.adapters.test_publicworks_unit import SR, adapter, cw, ok, record
from tests.sync.conftest import city, sim
from tests.sync.test_status_in import delivered_cases

__all__ = ["adapter", "city", "cw"]  # fixtures used by name below

pytestmark = pytest.mark.timeout(120)


async def test_one_status_in_both_0130s_gives_two_event_ids(adapter, cw) -> None:
    edt = record(7, "Closed", DateTimeModified="2026-11-01T01:30:00-04:00")
    est = record(7, "Closed", DateTimeModified="2026-11-01T01:30:00-05:00")
    reopened = record(7, "Reopened", DateTimeModified="2026-11-01T01:45:00-04:00")
    cw.post(SR + "ByIds").mock(side_effect=[ok([edt]), ok([reopened]), ok([est])])
    first, middle, second = [(await adapter.get_status(["7"]))[0] for _ in range(3)]
    assert (first.occurred_at, second.occurred_at) == (
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC),
    )
    ids = [first.external_event_id, middle.external_event_id, second.external_event_id]
    assert len(set(ids)) == 3  # the second Closed is not thrown away as the first
    assert first.external_event_id == "7:Closed:2026-11-01T05:30:00.000000Z"
    assert second.external_event_id == "7:Closed:2026-11-01T06:30:00.000000Z"


async def test_a_naive_stamp_is_read_by_the_hub_rule_into_the_id(adapter, cw) -> None:
    """Naive 01:30 is the first occurrence (decision 0011), in the id as in occurred_at.
    Two byte-identical naive records cannot be told apart by their content: one change."""
    naive = record(7, "Closed", DateTimeModified="2026-11-01T01:30:00")
    cw.post(SR + "ByIds").mock(return_value=ok([naive]))
    (event,) = await adapter.get_status(["7"])
    assert event.occurred_at == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert event.external_event_id == "7:Closed:2026-11-01T05:30:00.000000Z"
    assert event.sequence == "2026-11-01T05:30:00.000000Z"


async def test_an_event_seen_under_its_old_id_then_its_new_one_changes_nothing(city) -> None:
    """The upgrade: the newest change of a request, applied before it under the old id,
    comes again under the new id (the poll's inclusive overlap). It must be a no-op."""
    hub, _cases, orders = await delivered_cases(city, 1)
    (case_id, order), simulator = next(iter(orders.items())), sim(city)
    simulator.advance(1, close=True)
    adapter = hub.adapter("publicworks")
    (event,) = await adapter.get_status([order.external_id])
    [stamp] = [r["DateTimeModified"] for r in simulator.records.values()]
    old = event.model_copy(update={"external_event_id": f"{order.external_id}:Closed:{stamp}"})
    assert old.external_event_id != event.external_event_id
    sync = StatusSync(hub)
    assert sync.apply("publicworks", [old], source="poll").outcomes[APPLIED] == 1
    before = snapshot(hub, case_id)

    again = sync.apply("publicworks", [event], source="poll").outcomes
    assert (again[NO_OP], again[APPLIED]) == (1, 0)
    assert snapshot(hub, case_id) == before
    # and once seen under the new id, it is a plain duplicate from then on
    assert sync.apply("publicworks", [event], source="poll").outcomes[DUPLICATE] == 1
    await hub.aclose()


def snapshot(hub, case_id: str) -> tuple:
    """What a status event may change: the case, its work order and its timeline."""
    with hub.uow() as uow:
        case = uow.cases.get(case_id)
        order = uow.work_orders.get(case_id, "publicworks")
        timeline = [(e.kind, e.message, e.detail) for e in uow.timeline.for_case(case_id)]
        return (
            case.status,
            case.version,
            order.raw_status,
            order.last_sequence,
            order.mapped_status,
            timeline,
        )


def test_event_id_is_the_request_the_status_and_the_utc_sequence() -> None:
    assert event_id(5, "Inspect", "2026-05-04T14:15:00.000000Z") == (
        "5:Inspect:2026-05-04T14:15:00.000000Z"
    )
