"""The soak's reconcile findings carry what it takes to see a drift's cause."""

from __future__ import annotations

import pytest

from hub.services.reconcile import Reconciler
from hub.testing.soak import explain_finding
from tests.sync.conftest import sim
from tests.sync.test_status_in import delivered_cases

pytestmark = pytest.mark.timeout(120)


async def test_a_drift_finding_shows_both_sides_and_the_timeline(city) -> None:
    hub, _cases, orders = await delivered_cases(city, 1)
    [(case_id, order)] = orders.items()
    sim(city).advance(1, close=True)  # the hub has not heard yet: a drift
    report = await Reconciler(hub).run("publicworks")
    [finding] = report.as_dict()["departments"]["publicworks"]["findings"]
    records = {"publicworks": city.state("publicworks")["records"]}
    explained = explain_finding(hub, records, finding)
    assert explained["kind"] == "drift" and explained["case_id"] == case_id
    assert explained["hub_work_order"]["raw_status"] == "New"
    assert explained["hub_work_order"]["external_id"] == order.external_id
    assert explained["hub_case"]["status"] == "in_queue"
    department = explained["department_record"]
    assert department["Status"] == "Closed" and department["DateTimeModified"]
    assert [e["NewValue"] for e in department["events"]] == ["New", "Closed"]
    assert [e["message"] for e in explained["timeline"] if e["kind"] == "status_changed"] == [
        "received → routed",
        "routed → in_queue (New)",
    ]
    assert explained["inbound_events"] == []  # nothing came in: a lost push, a missed poll
    await hub.aclose()
