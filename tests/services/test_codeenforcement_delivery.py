"""The delivery engine against the real SOAP code-enforcement simulator, on SQLite and
PostgreSQL: exactly one case per routed request under faults (SOAP Faults, HTML pages,
billion laughs, lost answers) and a kill -9 of a worker mid-batch."""

from __future__ import annotations

import itertools
import signal
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest

from hub.mapping import MappingSet
from hub.model import Case, CaseStatus, DeliveryState, utcnow
from hub.services.dispatch import Dispatcher
from hub.services.intake import IntakeService
from hub.services.runtime import Hub
from hub.services.sync import StatusSync
from hub.testing.generator import CaseGenerator
from hub.testing.harness import CE_PASSWORD_ENV, SimulatedCity
from tests.services.test_crash import delivered, start_worker, stop, wait_for, write_config

pytestmark = pytest.mark.timeout(120)
DEPT = "codeenforcement"
FAULTS_30 = {
    "error_5xx": 0.05,
    "rate_limit_429": 0.05,
    "timeout_after_commit": 0.05,
    "malformed": 0.10,  # HTML page, envelope cut in half, billion laughs, in turn
    "error_envelope": 0.05,  # SOAP Fault DATABASE_DEADLOCK
    "retry_after_seconds": 0.2,
    "hang_seconds": 0.8,
    "seed": 311,
}


def ce_cases(mappings: MappingSet, n: int, *, seed: int = 1) -> list[Case]:
    """Realistic generated cases that route to code enforcement."""
    generated = CaseGenerator(mappings, seed=seed).generate(n * 40)
    routed = (c for c in generated if (r := mappings.route(c)) and r.department == DEPT)
    cases = list(itertools.islice(routed, n))
    assert len(cases) == n
    return cases


def feed(hub: Hub, n: int, *, seed: int = 1) -> list[Case]:
    results = IntakeService(hub).submit_many(ce_cases(hub.mappings, n, seed=seed))
    assert all(r.created for r in results)
    return [r.case for r in results]


def records(city: SimulatedCity) -> dict[str, list[dict]]:
    by_reference: dict[str, list[dict]] = defaultdict(list)
    for record in city.state(DEPT)["records"]:
        by_reference[record["ExternalReference"]].append(record)
    return by_reference


def assert_exactly_once(hub: Hub, city: SimulatedCity, hub_ids: list[str]) -> dict[str, int]:
    """Each case: delivered with the department's only case for it, or dead with a reason
    and absent from the department."""
    found_by_ref = records(city)
    tally = {"delivered": 0, "dead": 0}
    with hub.uow() as uow:
        for hub_id in hub_ids:
            order = uow.work_orders.get(hub_id, DEPT)
            found = found_by_ref.get(hub_id, [])
            assert len(found) <= 1, f"duplicate cases for {hub_id}: {found}"
            if order.delivery_state is DeliveryState.DELIVERED:
                assert len(found) == 1 and order.external_id == found[0]["CaseId"]
                tally["delivered"] += 1
            else:
                assert order.delivery_state is DeliveryState.DEAD, order.delivery_state
                assert not found, f"{hub_id} dead-lettered but the department has it"
                tally["dead"] += 1
    assert not set(found_by_ref) - set(hub_ids), "the department holds cases never sent"
    return tally


async def drain(hub: Hub, *, timeout: float = 60) -> Dispatcher:
    dispatcher = Dispatcher(hub, worker_id="test-worker")
    await dispatcher.run(until_empty=True, timeout=timeout)
    return dispatcher


async def test_cases_become_department_cases_and_closures_flow_back(city: SimulatedCity) -> None:
    hub = city.hub()
    cases = feed(hub, 12)
    await drain(hub)
    assert assert_exactly_once(hub, city, [c.hub_id for c in cases]) == {"delivered": 12, "dead": 0}
    city.simulator(DEPT).advance(12, close=True)
    result = await StatusSync(hub).poll(DEPT)
    assert result.as_dict()
    with hub.uow() as uow:
        statuses = {uow.cases.get(c.hub_id).status for c in cases}
    assert statuses <= {CaseStatus.RESOLVED, CaseStatus.CLOSED} and statuses
    await hub.aclose()


@pytest.mark.slow
async def test_cases_with_30_percent_faults_are_delivered_exactly_once(
    city: SimulatedCity,
) -> None:
    city.set_faults(DEPT, FAULTS_30)
    hub = city.hub()
    cases = feed(hub, 150, seed=5)
    dispatcher = await drain(hub, timeout=90)
    tally = assert_exactly_once(hub, city, [c.hub_id for c in cases])
    assert tally["delivered"] + tally["dead"] == 150 and tally["delivered"] >= 148
    state = city.state(DEPT)
    assert state["faults"]["malformed"] >= 3  # every malformed kind struck, laughs included
    assert dispatcher.stats.attempts["retry"] > 20
    assert dispatcher.stats.attempts["adopted"] > 0 or state["duplicates"] == {}
    await hub.aclose()


async def test_timeout_after_commit_is_adopted_by_lookup_not_created_twice(
    city: SimulatedCity,
) -> None:
    city.set_faults(DEPT, {"timeout_after_commit": 1.0, "hang_seconds": 1.0})
    hub = city.hub()
    cases = feed(hub, 4)
    await Dispatcher(hub, worker_id="w").run(timeout=1.0)  # creates commit, answers lost
    assert len(records(city)) == 4
    city.set_faults(DEPT, "none")
    await drain(hub)
    assert_exactly_once(hub, city, [c.hub_id for c in cases])
    assert set(city.state(DEPT)["create_calls"].values()) == {1}  # never a second create
    await hub.aclose()


async def test_refused_record_type_dead_letters_then_replays(city: SimulatedCity) -> None:
    simulator = city.simulator(DEPT)
    known = set(simulator.record_types)
    simulator.record_types = set()  # the agency disabled every record type: INVALID_RECORD_TYPE
    hub = city.hub()
    [case] = feed(hub, 1)
    await drain(hub)
    with hub.uow() as uow:
        [item] = uow.outbox.list(state="dead")
    assert item.attempts == 1 and item.last_error_class == "permanent"
    assert "INVALID_RECORD_TYPE" in item.last_error_message
    simulator.record_types = known
    with hub.uow() as uow:
        assert uow.outbox.replay([item.id]) == 1
        uow.commit()
    await drain(hub)
    assert assert_exactly_once(hub, city, [case.hub_id]) == {"delivered": 1, "dead": 0}
    await hub.aclose()


async def test_wrong_password_pauses_the_department_without_leaking_it(
    city: SimulatedCity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CE_PASSWORD_ENV, "wrong-ce-password")
    hub = city.hub()
    [case] = feed(hub, 1)
    await Dispatcher(hub, worker_id="w").run(drain=True)
    with hub.uow() as uow:
        health = uow.departments.get(DEPT)
        [item] = uow.outbox.for_case(case.hub_id)
        events = uow.timeline.for_case(case.hub_id)
    assert health.paused and item.state == "pending" and item.attempts == 0
    assert "wrong-ce-password" not in str([e.model_dump() for e in events])
    await hub.aclose()


async def test_429_retry_after_is_stored(city: SimulatedCity) -> None:
    city.set_faults(DEPT, {"rate_limit_429": 1.0, "retry_after_seconds": 30})
    hub = city.hub()
    [case] = feed(hub, 1)
    before = utcnow()
    await Dispatcher(hub, worker_id="w").run(drain=True)
    with hub.uow() as uow:
        [item] = uow.outbox.for_case(case.hub_id)
    assert item.state == "pending" and item.next_attempt_at >= before + timedelta(seconds=29)
    await hub.aclose()


@pytest.mark.slow
def test_worker_killed_mid_batch_loses_and_duplicates_nothing(
    city: SimulatedCity, tmp_path: Path
) -> None:
    city.set_faults(DEPT, {"latency_ms": 120})  # many calls in flight at the kill
    hub = city.hub()
    cases = feed(hub, 150, seed=3)
    config = write_config(city, tmp_path / "hub.yaml", lease_seconds=2)
    first = start_worker(city, config, "doomed")
    try:
        wait_for(lambda: delivered(hub) >= 30, timeout=60, what="first deliveries")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        stop(first)
    assert delivered(hub) < 150, "the kill came too late to test anything"
    second = start_worker(city, config, "survivor")
    try:
        wait_for(lambda: delivered(hub) == 150, timeout=90, what="all 150 delivered")
    finally:
        stop(second)
    assert assert_exactly_once(hub, city, [c.hub_id for c in cases]) == {
        "delivered": 150,
        "dead": 0,
    }
    hub.dispose()


async def test_one_poll_reads_every_page_of_a_large_backlog(city: SimulatedCity) -> None:
    """More closures than one page holds, all inside the overlap window: the poll follows
    `More` page by page instead of re-reading the first page for ever (found by the soak)."""
    config = city.config()
    config.departments[DEPT].settings["page_size"] = 7
    hub = Hub(config, database=city.database_url)
    cases = feed(hub, 30)
    await drain(hub)
    city.simulator(DEPT).advance(30, close=True)
    result = await StatusSync(hub, actor="test").poll(DEPT)
    assert result.outcomes["applied"] == 30
    with hub.uow() as uow:
        closed = [uow.cases.get(c.hub_id).status.is_final for c in cases]
    assert all(closed)
    await hub.aclose()
