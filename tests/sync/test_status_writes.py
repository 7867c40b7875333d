"""What a status event writes: its inbound row once, with its outcome, and the case and
work order only in columns no index holds (so PostgreSQL rewrites them in place)."""

from __future__ import annotations

import re

import pytest

from hub.services.sync import StatusSync
from hub.store import tables as t
from hub.store.repository import _KEPT_IF_NONE
from hub.testing.harness import SimulatedCity
from tests.services.conftest import feed
from tests.statements import statements
from tests.sync.conftest import deliver, make_hub, sim

pytestmark = pytest.mark.timeout(120)
UPDATE = re.compile(r"^\s*UPDATE\s+(\w+)\s+SET\s+(.*?)\s+WHERE\s", re.IGNORECASE | re.DOTALL)


def indexed_columns(table) -> set[str]:
    """Every column some index, unique constraint or the primary key of `table` holds."""
    named = {c.name for index in table.indexes for c in index.columns}
    for constraint in table.constraints:
        named |= {c.name for c in getattr(constraint, "columns", ())}
    return named


def updated_columns(sent: list[str]) -> dict[str, set[str]]:
    """The columns each table's UPDATE statements set."""
    columns: dict[str, set[str]] = {}
    for statement in sent:
        match = UPDATE.match(statement)
        if match:
            table, assignments = match.groups()
            columns.setdefault(table, set()).update(re.findall(r"(\w+)\s*=", assignments))
    return columns


async def polled_events(city: SimulatedCity, n: int, *, close: bool):
    hub = make_hub(city)
    cases = feed(hub, n)
    await deliver(hub)
    with hub.uow() as uow:
        orders = [uow.work_orders.get(c.hub_id, "publicworks") for c in cases]
    sim(city).advance(n, close=close)
    events = await hub.adapter("publicworks").get_status([o.external_id for o in orders])
    return hub, orders, events


async def test_an_event_is_recorded_once_with_its_outcome(city) -> None:
    hub, orders, events = await polled_events(city, 3, close=True)
    with statements(hub.engine) as sent:
        result = StatusSync(hub).apply("publicworks", events, source="poll")
    assert result.outcomes["applied"] == 3
    writes = [s for s in sent if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    inbound = [s for s in writes if "inbound_events" in s]
    assert len(inbound) == 1 and inbound[0].lstrip().upper().startswith("INSERT")
    ie = t.inbound_events.c
    with hub.engine.connect() as conn:
        rows = conn.execute(t.inbound_events.select().order_by(ie.id)).all()
    assert sorted((r.outcome, r.case_id) for r in rows) == sorted(
        ("applied", o.case_id) for o in orders
    )
    await hub.aclose()


async def test_a_status_change_writes_no_indexed_column_of_the_case_or_work_order(
    city,
) -> None:
    # Any indexed column in the SET makes every status change on PostgreSQL a new row
    # version with new entries in all of the table's indexes (not a HOT update).
    hub, _orders, events = await polled_events(city, 3, close=True)
    with statements(hub.engine) as sent:
        result = StatusSync(hub).apply("publicworks", events, source="poll")
    assert result.outcomes["applied"] == 3
    written = updated_columns(sent)
    assert {"status", "body"} <= written["cases"] and "raw_status" in written["work_orders"]
    assert written["cases"] & indexed_columns(t.cases) == set()
    # The link columns are written as COALESCE(new, stored): unchanged unless an event
    # links a record found by reference, so the row's index values stay as they were.
    linked = {"external_id", "delivery_state"}
    assert linked <= set(_KEPT_IF_NONE)
    assert written["work_orders"] & indexed_columns(t.work_orders) == linked
    await hub.aclose()


async def test_an_event_recorded_meanwhile_reruns_the_page_without_it(city) -> None:
    # A webhook records one of the poll's events between the poll's read-ahead and its
    # transaction: the page's outcomes may rest on what the webhook changed, so the page
    # runs again without that event, which counts as a duplicate and keeps its row.
    hub, orders, events = await polled_events(city, 3, close=True)
    sync = StatusSync(hub)
    taken = events[0]
    read_ahead = sync._read_ahead

    def webhook_records_one_meanwhile(department, ordered):
        fresh, known = read_ahead(department, ordered)
        with hub.uow() as uow:
            row = {name: None for name in uow.inbound._RECORD}
            row |= {
                "department": "publicworks",
                "external_event_id": taken.external_event_id,
                "raw_code": taken.raw_code,
                "occurred_at": taken.occurred_at,
                "received_at": taken.occurred_at,
                "payload": {"source": "push"},
                "outcome": "no_op",
            }
            assert uow.inbound.record_many([row]) == {taken.external_event_id}
            uow.commit()
        return fresh, known

    sync._read_ahead = webhook_records_one_meanwhile  # type: ignore[method-assign]
    result = sync.apply("publicworks", events, source="poll")
    assert result.outcomes["duplicate"] == 1 and result.outcomes["applied"] == 2
    with hub.engine.connect() as conn:
        rows = {r.external_event_id: r.outcome for r in conn.execute(t.inbound_events.select())}
    assert rows == {e.external_event_id: "no_op" if e is taken else "applied" for e in events}
    taken_case = next(o.case_id for o in orders if o.external_id == taken.external_id)
    with hub.uow() as uow:
        statuses = {o.case_id: uow.cases.get(o.case_id).status.value for o in orders}
    assert statuses.pop(taken_case) == "in_queue"  # the page's rerun left it to the webhook
    assert set(statuses.values()) == {"resolved"}
    await hub.aclose()
