"""The payments sweep (``payments:heal``, the reconcile's payments section) reads the fee
cases set-wise.

Its statements per sweep must not grow with the number of fee cases (it once ran a work
order query and an outbox query per case), and what it reports and heals must stay what the
per-case reading decided, for every kind of case it tells apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from adapters.payments.plugin import payments_adapter, payments_report
from hub.model import Case, CaseStatus
from hub.services.intake import IntakeService
from hub.services.runtime import Hub
from hub.store import tables as t
from hub.testing.harness import SimulatedCity, simulated_city
from tests.statements import statements

SANITATION = "sanitation"

# Every kind of fee case the sweep tells apart: (payment_status or None for a case that came
# in before payments were configured, case cancelled, work order state, intent row kept).
KINDS: dict[str, tuple[str | None, bool, str, bool]] = {
    "awaiting": ("required", False, "held", True),
    "declined": ("requires_payment_method", False, "held", True),
    "no_intent": ("required", False, "held", False),
    "paid_held": ("succeeded", False, "held", True),
    "paid_cancelled": ("succeeded", True, "cancelled", True),
    "dispatched_unpaid": ("required", False, "delivered", True),
    "paid_delivered": ("succeeded", False, "delivered", True),
    "refunded": ("refunded", True, "delivered", True),
    "expired": ("canceled", False, "held", True),
    "cancelled_unpaid": ("canceled", True, "cancelled", True),
    "cancelled_no_intent": ("required", True, "cancelled", False),
    "ungated": (None, False, "held", True),
}
# The kinds a healing sweep writes nothing for: a steady backlog.
STEADY = [k for k in KINDS if k not in ("no_intent", "paid_held", "paid_cancelled")]

EXPECTED = {
    "paid_not_dispatched": {"paid_held"},
    "dispatched_not_paid": {"dispatched_unpaid"},
    "refunds_pending": {"paid_cancelled"},
    "awaiting_without_intent": {"no_intent"},
    "awaiting_payment": {"awaiting", "declined"},
}


@pytest.fixture
def city(tmp_path: Path, db_url: str) -> Iterator[SimulatedCity]:
    with simulated_city(tmp_path / "city", database_url=db_url, payments=True) as city:
        yield city


def bulk(source_id: str) -> Case:
    return Case(
        source_system="test",
        source_id=source_id,
        service_code="BULKITEM",
        address_string="12 Adams St",
        attributes={"item_types": ["furniture"], "item_count": 2},
    )


def submit(hub: Hub, kinds: list[str], first: int) -> dict[str, str]:
    """Fee cases through intake (held, intent queued), then shaped into `kinds`: hub id →
    kind."""
    results = IntakeService(hub).submit_many([bulk(f"fee-{first + n}") for n in range(len(kinds))])
    shaped = {r.case.hub_id: kind for r, kind in zip(results, kinds, strict=True)}
    with hub.uow() as uow:
        for case_id, kind in shaped.items():
            _shape(uow, case_id, *KINDS[kind])
        uow.commit()
    return shaped


def _shape(uow: Any, case_id: str, status: str | None, cancelled: bool, order: str, intent: bool):
    case = uow.cases.get(case_id)
    version = case.version
    attributes = {k: v for k, v in case.attributes.items() if k != "payment_status"}
    case.attributes = attributes if status is None else {**attributes, "payment_status": status}
    if cancelled:
        case.status = CaseStatus.CANCELLED
    case.version += 1
    uow.cases.save(case, expected_version=version)
    uow.work_orders.update(case_id, SANITATION, delivery_state=order)
    if not intent:
        ob = t.outbox.c
        uow.connection.execute(
            delete(t.outbox).where(ob.case_id == case_id, ob.operation == "payment_intent")
        )


def kinds_for(count: int, kinds: list[str]) -> list[str]:
    return [kinds[n % len(kinds)] for n in range(count)]


def snapshot(hub: Hub) -> dict[str, Any]:
    """Everything a sweep may write: outbox rows, work orders, timeline kinds per case."""
    with hub.uow() as uow:
        c = uow.connection
        ob, wo, ev = t.outbox.c, t.work_orders.c, t.case_events.c
        outbox = c.execute(select(ob.case_id, ob.operation, ob.idempotency_key, ob.state))
        orders = c.execute(select(wo.case_id, wo.department, wo.delivery_state))
        events = c.execute(select(ev.case_id, ev.kind))
        return {
            "outbox": {tuple(r) for r in outbox},
            "orders": {tuple(r) for r in orders},
            "events": sorted(tuple(r) for r in events),
        }


def buckets(report: dict[str, Any], shaped: dict[str, str]) -> dict[str, set[str]]:
    return {name: {shaped[i] for i in ids} for name, ids in report["cases"].items()}


@pytest.mark.parametrize("heal", [False, True])
def test_sweep_statements_do_not_grow_with_the_fee_cases(city: SimulatedCity, heal: bool) -> None:
    hub = city.hub()
    counts = []
    # Report only: every kind. Healing: the steady kinds (a heal's own writes are per case
    # healed, and a healed case is steady on the next sweep).
    kinds = list(KINDS) if not heal else STEADY
    shaped: dict[str, str] = {}
    for first, count in ((0, 5), (5, 45)):  # 5 fee cases, then 50
        shaped |= submit(hub, kinds_for(count, kinds), first)
        with statements(hub.engine) as sent:
            report = payments_report(hub, heal=heal)
        assert sum(len(ids) for ids in report["cases"].values()) > 0
        assert {i for ids in report["cases"].values() for i in ids} <= set(shaped)
        counts.append(len(sent))
    assert len(shaped) == 50
    assert counts[0] == counts[1], f"statements per sweep: {counts} for 5 and 50 fee cases"
    hub.dispose()


def test_sweep_reports_and_heals_exactly_what_it_did_per_case(city: SimulatedCity) -> None:
    hub = city.hub()
    shaped = submit(hub, list(KINDS), 0)
    by_kind = {kind: case_id for case_id, kind in shaped.items()}
    dept = payments_adapter(hub).department  # type: ignore[union-attr]

    before = snapshot(hub)
    report = payments_report(hub)
    assert buckets(report, shaped) == EXPECTED
    assert report["counts"] == {name: len(kinds) for name, kinds in EXPECTED.items()}
    assert snapshot(hub) == before  # a report without heal writes nothing

    healed = payments_report(hub, heal=True)
    assert buckets(healed, shaped) == EXPECTED and healed["healed"] is True
    after = snapshot(hub)
    paid_held, no_intent = by_kind["paid_held"], by_kind["no_intent"]
    refund = by_kind["paid_cancelled"]
    # Exactly the heals of the per-case sweep, and nothing for any other case.
    assert after["outbox"] - before["outbox"] == {
        (no_intent, "payment_intent", f"{no_intent}:{dept}:payment_intent", "pending"),
        (refund, "payment_cancel", f"{refund}:{dept}:payment_cancel:reconcile", "pending"),
        (paid_held, "create", f"{paid_held}:{SANITATION}:create", "pending"),
    }
    assert before["outbox"] - after["outbox"] == {
        (paid_held, "create", f"{paid_held}:{SANITATION}:create", "held")
    }
    assert after["orders"] ^ before["orders"] == {
        (paid_held, SANITATION, "held"),
        (paid_held, SANITATION, "pending"),
    }
    new_events = list(after["events"])
    for old in before["events"]:
        new_events.remove(old)
    assert new_events == [(paid_held, "released")]
    hub.dispose()
