"""Reconciliation against the real simulator: lost record, orphan, lost webhook, stuck."""

from __future__ import annotations

import asyncio

import pytest

from hub.model import CaseStatus, DeliveryState
from hub.services.reconcile import Reconciler, last_report
from hub.store.repository import OutboxState
from tests.services.conftest import feed
from tests.sync.conftest import deliver, make_hub, sim

pytestmark = pytest.mark.timeout(120)


async def test_drift_is_found_healed_and_a_second_run_is_clean(city) -> None:
    hub = make_hub(city)
    cases = feed(hub, 5)
    await deliver(hub)
    lost_case, webhook_case, orphan_case = cases[0], cases[1], feed(hub, 1, seed=9)[0]
    with hub.uow() as uow:
        lost = uow.work_orders.get(lost_case.hub_id, "publicworks")
        changed = uow.work_orders.get(webhook_case.hub_id, "publicworks")
    simulator = sim(city)
    simulator.lose(int(lost.external_id))  # the department loses a work order
    simulator.advance(1, close=True, request_ids=[int(changed.external_id)])  # webhook lost
    # The department created the orphan's record, but the hub never heard back and gave up.
    record = simulator.add_record(orphan_case.hub_id)
    with hub.uow() as uow:
        [item] = uow.outbox.for_case(orphan_case.hub_id)
        uow.outbox.mark_dead(item.id, error_class="unknown_outcome", message="gave up")
        uow.work_orders.update(orphan_case.hub_id, "publicworks", delivery_state=DeliveryState.DEAD)
        uow.commit()

    dry = await Reconciler(hub).run("publicworks")
    assert dry.counts == {"missing": 1, "orphan": 1, "drift": 1, "stuck": 1}
    findings = {f.kind: f for f in dry.departments["publicworks"].findings}
    assert findings["missing"].case_id == lost_case.hub_id
    assert findings["drift"].department_status == "Closed"
    assert findings["orphan"].external_id == str(record["RequestId"])
    assert last_report(hub)["counts"] == dry.counts  # stored, shown by --last
    with hub.uow() as uow:  # a dry run changes nothing
        assert uow.cases.get(webhook_case.hub_id).status is CaseStatus.IN_QUEUE

    healed = await Reconciler(hub).run("publicworks", heal=True)
    assert healed.departments["publicworks"].healed["missing"] == 1
    await deliver(hub)  # the re-dispatched create goes through the normal outbox
    again = await Reconciler(hub).run("publicworks", heal=True)
    assert again.clean, again.as_dict()["departments"]["publicworks"]["findings"]

    with hub.uow() as uow:
        closed = uow.cases.get(webhook_case.hub_id)
        adopted = uow.work_orders.get(orphan_case.hub_id, "publicworks")
        redone = uow.work_orders.get(lost_case.hub_id, "publicworks")
        dead = uow.outbox.list(state=OutboxState.DEAD)
    assert closed.status is CaseStatus.RESOLVED and closed.closure.code == "completed"
    assert adopted.external_id == str(record["RequestId"])
    assert adopted.delivery_state is DeliveryState.DELIVERED and not dead
    assert redone.external_id not in (None, lost.external_id)
    refs = [r["OtherSystemId"] for r in city.state("publicworks")["records"]]
    assert refs.count(lost_case.hub_id) == 1 and refs.count(orphan_case.hub_id) == 1
    await hub.aclose()


async def test_a_record_with_an_unknown_reference_is_reported_not_adopted(city) -> None:
    hub = make_hub(city)
    feed(hub, 2)
    await deliver(hub)
    sim(city).add_record("f00dfeed-0000-4000-8000-000000000000")
    report = await Reconciler(hub).run(heal=True)
    [finding] = report.departments["publicworks"].findings
    assert finding.kind == "orphan" and finding.healed is None
    assert "does not know" in finding.detail
    await hub.aclose()


async def test_an_orphan_beyond_the_first_page_of_changes_is_found(city) -> None:
    # A department that pages its changes (public works: one time window per page when
    # more than max_changes_per_poll changed) is listed to the end, not to its first page.
    hub = make_hub(city)
    hub.config.departments["publicworks"].settings["max_changes_per_poll"] = 2
    feed(hub, 6)
    await deliver(hub)
    await asyncio.sleep(1.1)  # the orphan changes in a later second: a later window
    record = sim(city).add_record("f00dfeed-0000-4000-8000-000000000001")
    report = await Reconciler(hub).run("publicworks")
    [finding] = report.departments["publicworks"].findings
    assert finding.kind == "orphan" and finding.external_id == str(record["RequestId"])
    assert report.departments["publicworks"].listed >= 7
    await hub.aclose()
