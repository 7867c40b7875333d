"""A department clock in whole seconds: a crew's Dispatch and Closed of one request carry
the same DateTimeModified (on-prem Cityworks), so they share a sequence. Whichever way
the hub sees them (one webhook, or a lost push and a poll that read the request between
the two steps and committed last), the work order must end on Closed, not on the step
before it: that was the soak's end-of-run "raw-status drift" with every case resolved."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest

from hub.model import CaseStatus
from hub.services.reconcile import Reconciler
from hub.services.sync import APPLIED, STALE, StatusSync
from hub.services.webhooks import WebhookService, signature_header
from hub.testing.soak import publicworks_webhook_event
from tests.sync.conftest import SECRET_ENV, sim
from tests.sync.test_status_in import delivered_cases

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def one_second(city, monkeypatch):
    """The public-works simulator stamping whole seconds, all within one second."""
    simulator = sim(city)
    simulator.timestamp_resolution = "seconds"
    now = datetime.now(simulator.zone).replace(tzinfo=None, microsecond=0)
    monkeypatch.setattr(simulator, "local_now", lambda: now)
    return simulator


async def push(hub, steps: list[dict]) -> dict:
    zone = hub.mapping("publicworks").local_timezone
    body = json.dumps({"events": [publicworks_webhook_event(s, zone) for s in steps]}).encode()
    signature = signature_header(os.environ[SECRET_ENV], body)
    return (await WebhookService(hub).receive("publicworks", body, signature)).as_dict()


def raw_and_case(hub, case_id: str) -> tuple[str | None, CaseStatus]:
    with hub.uow() as uow:
        order = uow.work_orders.get(case_id, "publicworks")
        return order.raw_status, uow.cases.get(case_id).status


async def assert_no_drift(hub) -> None:
    report = await Reconciler(hub).run("publicworks")
    assert report.counts["drift"] == 0, report.as_dict()["departments"]["publicworks"]


async def test_one_webhook_with_both_steps_of_one_second_ends_on_closed(city, one_second):
    hub, _cases, orders = await delivered_cases(city, 2)
    steps = one_second.advance(2) + one_second.advance(2, close=True)
    assert {s["DateModified"] for s in steps} == {steps[0]["DateModified"]}  # one stamp
    result = await push(hub, steps)
    assert result["applied"] == 4
    for case_id in orders:
        assert raw_and_case(hub, case_id) == ("Closed", CaseStatus.RESOLVED)
    await assert_no_drift(hub)
    await hub.aclose()


async def test_a_late_poll_of_the_first_step_does_not_undo_the_second(city, one_second):
    hub, _cases, orders = await delivered_cases(city, 2)
    adapter = hub.adapter("publicworks")
    one_second.advance(2)  # Dispatch
    # A poll reads the requests now (ByIds) but commits only after the push below.
    read_early = await adapter.get_status([o.external_id for o in orders.values()])
    closed = one_second.advance(2, close=True)  # Closed, the same second
    assert (await push(hub, closed))["applied"] == 2  # the Dispatch pushes were lost
    late = StatusSync(hub).apply("publicworks", read_early, source="poll")
    assert late.outcomes[STALE] == 2 and late.outcomes[APPLIED] == 0
    for case_id in orders:
        assert raw_and_case(hub, case_id) == ("Closed", CaseStatus.RESOLVED)
    with hub.uow() as uow:  # refused, not warned about: the hub knew it was older
        kinds = {e.kind for c in orders for e in uow.timeline.for_case(c)}
    assert "status_refused" not in kinds
    await assert_no_drift(hub)
    await hub.aclose()


async def test_the_later_step_still_wins_when_it_arrives_last(city, one_second):
    hub, _cases, orders = await delivered_cases(city, 2)
    adapter = hub.adapter("publicworks")
    one_second.advance(2)
    dispatched = await adapter.get_status([o.external_id for o in orders.values()])
    assert StatusSync(hub).apply("publicworks", dispatched, source="poll").outcomes[APPLIED] == 2
    closed = one_second.advance(2, close=True)
    assert (await push(hub, closed))["applied"] == 2
    for case_id in orders:
        assert raw_and_case(hub, case_id) == ("Closed", CaseStatus.RESOLVED)
    await assert_no_drift(hub)
    await hub.aclose()


async def test_the_poll_after_a_same_second_push_changes_nothing(city, one_second):
    hub, _cases, orders = await delivered_cases(city, 2)
    steps = one_second.advance(2) + one_second.advance(2, close=True)
    await push(hub, steps[::-1])  # a department that pushes newest first
    again = await StatusSync(hub).poll("publicworks")
    assert again.outcomes[APPLIED] == 0
    for case_id in orders:
        assert raw_and_case(hub, case_id) == ("Closed", CaseStatus.RESOLVED)
    await assert_no_drift(hub)
    await hub.aclose()
