"""The payment gate with the real simulators on loopback: fee services are never dispatched
unpaid, paid ones exactly once, cancels cancel or refund, webhooks are verified."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from adapters.payments.adapter import minor_units, sign
from adapters.payments.plugin import payments_report
from hub.adapters import Permanent
from hub.api.app import create_app
from hub.model import Case, CaseStatus
from hub.services.dispatch import Dispatcher
from hub.services.intake import IntakeService
from hub.services.outbound import OutboundService
from hub.services.runtime import Hub
from hub.services.scheduler import Scheduler
from hub.store import tables as t
from hub.testing.harness import SimulatedCity, simulated_city
from hub.testing.simulators.payments import DEFAULT_WEBHOOK_SECRET, PaymentsSimulator


@pytest.fixture
def city(tmp_path: Path, db_url: str) -> Iterator[SimulatedCity]:
    with simulated_city(tmp_path / "city", database_url=db_url, payments=True) as city:
        city.simulator("payments").configure(auto_succeed=False)  # type: ignore[attr-defined]
        yield city


def bulk(source_id: str) -> Case:
    return Case(
        source_system="test",
        source_id=source_id,
        service_code="BULKITEM",
        address_string="12 Adams St",
        attributes={"item_types": ["furniture"], "item_count": 2},
    )


def work(hub: Hub, seconds: float, *, until_empty: bool = False) -> None:
    async def run() -> None:
        await Dispatcher(hub, worker_id="t").run(timeout=seconds, until_empty=until_empty)
        await hub.aclose()

    asyncio.run(run())


def sim(city: SimulatedCity) -> PaymentsSimulator:
    return city.simulator("payments")  # type: ignore[return-value]


def state(hub: Hub, case_id: str):
    with hub.uow() as uow:
        return (
            uow.cases.get(case_id),
            uow.work_orders.get(case_id, "sanitation"),
            [e.kind for e in uow.timeline.for_case(case_id)],
        )


def test_fee_case_waits_for_payment_then_is_dispatched_exactly_once(city: SimulatedCity) -> None:
    hub = city.hub()
    result = IntakeService(hub).submit(bulk("paid"))
    assert result.held is not None and result.held.state == "awaiting_payment"
    assert result.held.detail == {"amount_cents": 2500, "currency": "USD"}
    work(hub, 1.0)
    case, order, kinds = state(hub, result.case.hub_id)
    assert order.delivery_state == "held" and "payment_requested" in kinds
    reference = case.attributes["payment_reference"]
    assert case.attributes["payment_url"].endswith(reference)
    assert sim(city).create_calls[result.case.hub_id] == 1
    sim(city).pay(reference)  # no webhook configured: the poll finds it
    work(hub, 6.0, until_empty=True)
    case, order, kinds = state(hub, result.case.hub_id)
    assert case.attributes["payment_status"] == "succeeded"
    assert order.delivery_state == "delivered" and kinds.count("released") == 1
    with hub.uow() as uow:
        creates = [i for i in uow.outbox.for_case(case.hub_id) if i.operation == "create"]
    assert [(i.state, i.attempts) for i in creates] == [("done", 1)]
    assert payments_report(hub)["counts"]["dispatched_not_paid"] == 0


def test_the_periodic_heal_requests_a_payment_whose_enqueue_was_lost(city: SimulatedCity) -> None:
    hub = city.hub()
    result = IntakeService(hub).submit(bulk("lost-enqueue"))
    with hub.uow() as uow:  # a crash between intake's commit and the hook's enqueue
        ob = t.outbox.c
        uow.connection.execute(
            delete(t.outbox).where(ob.case_id == result.case.hub_id, ob.operation != "create")
        )
        uow.commit()
    work(hub, 1.0)
    case, order, kinds = state(hub, result.case.hub_id)
    assert "payment_requested" not in kinds and order.delivery_state == "held"
    [job] = [j for j in Scheduler(hub, worker_id="w").plugin_jobs() if j.name == "payments:heal"]
    assert asyncio.run(Scheduler(hub, worker_id="w").periodic(job)) is True
    work(hub, 1.0)
    case, order, kinds = state(hub, result.case.hub_id)
    assert "payment_requested" in kinds and case.attributes["payment_reference"]
    assert sim(city).create_calls[result.case.hub_id] == 1


def test_declined_payment_is_never_dispatched(city: SimulatedCity) -> None:
    sim(city).configure(auto_succeed=True, decline_rate=1.0, pay_delay_seconds=0.0)
    hub = city.hub()
    result = IntakeService(hub).submit(bulk("declined"))
    work(hub, 3.0)
    case, order, _ = state(hub, result.case.hub_id)
    assert case.attributes["payment_status"] == "requires_payment_method"
    assert order.delivery_state == "held"
    report = payments_report(hub)
    assert report["cases"]["awaiting_payment"] == [case.hub_id]


def test_webhooks_forged_stale_and_replayed_are_rejected(city: SimulatedCity) -> None:
    hub = city.hub()
    result = IntakeService(hub).submit(bulk("hooked"))
    work(hub, 1.0)
    case, _, _ = state(hub, result.case.hub_id)
    simulator = sim(city)
    simulator.pay(case.attributes["payment_reference"])
    event_id = next(w["id"] for w in simulator.webhooks if w["type"] == "payment_intent.succeeded")
    body, header = simulator.resend(event_id)
    with TestClient(create_app(hub)) as client:
        post = lambda b, h: client.post(  # noqa: E731
            "/webhooks/payments", content=b, headers={"Stripe-Signature": h} if h else {}
        )
        assert post(body, sign("whsec_forged", body)).status_code == 401
        stale = sign(DEFAULT_WEBHOOK_SECRET, body, int(time.time()) - 400)
        assert post(body, stale).status_code == 401
        assert post(body, None).status_code == 401
        tampered = body.replace(b"succeeded", b"succeedee")
        assert post(tampered, header).status_code == 401
        first = post(body, header)
        assert first.status_code == 200 and first.json()["accepted"] is True
        replay = post(body, simulator.resend(event_id)[1])  # re-signed, same event
        assert replay.status_code == 200 and replay.json()["duplicate"] is True
    work(hub, 3.0, until_empty=True)
    case, order, kinds = state(hub, result.case.hub_id)
    assert case.attributes["payment_status"] == "succeeded"
    assert order.delivery_state == "delivered" and kinds.count("released") == 1
    assert kinds.count("payment_succeeded") == 1


def test_cancel_unpaid_cancels_the_intent(city: SimulatedCity) -> None:
    hub = city.hub()
    result = IntakeService(hub).submit(bulk("cancel-unpaid"))
    work(hub, 1.0)
    OutboundService(hub).cancel(result.case.hub_id, "resident changed their mind")
    work(hub, 3.0, until_empty=True)
    case, order, _ = state(hub, result.case.hub_id)
    intent = sim(city).records[case.attributes["payment_reference"]]
    assert intent["status"] == "canceled" and case.attributes["payment_status"] == "canceled"
    assert case.status is CaseStatus.CANCELLED and order.delivery_state == "cancelled"
    assert not sim(city).refunds


def test_cancel_paid_but_not_served_refunds(city: SimulatedCity) -> None:
    hub = city.hub()
    result = IntakeService(hub).submit(bulk("cancel-paid"))
    work(hub, 1.0)
    case, _, _ = state(hub, result.case.hub_id)
    sim(city).pay(case.attributes["payment_reference"])
    OutboundService(hub).cancel(result.case.hub_id, "no longer needed")
    work(hub, 4.0, until_empty=True)
    case, order, kinds = state(hub, result.case.hub_id)
    refunds = list(sim(city).refunds.values())
    assert len(refunds) == 1 and refunds[0]["amount"] == 2500
    assert case.attributes["payment_status"] == "refunded" and "payment_refunded" in kinds
    assert order.delivery_state != "delivered"
    assert payments_report(hub)["counts"]["refunds_pending"] == 0
    from hub.services.reconcile import Reconciler

    report = asyncio.run(Reconciler(hub).run()).as_dict()
    section = report["sections"]["payments"]
    assert section["configured"] and section["counts"]["refunds_pending"] == 0


def test_amounts_are_integer_minor_units() -> None:
    assert minor_units(2500) == 2500
    for bad in (25.0, "2500", True, 0):
        with pytest.raises(Permanent):
            minor_units(bad)


def test_event_body_is_signed_over_raw_bytes() -> None:
    body = json.dumps({"id": "evt_1"}).encode()
    header = sign("s", body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
