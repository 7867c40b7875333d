"""Sanitation through the engine: N cases with faults delivered exactly once (SQLite and
PostgreSQL); a `hub worker` killed with SIGKILL mid-batch loses and duplicates nothing."""

from __future__ import annotations

import itertools
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.sanitation.testing import SanitationHarness
from hub.config import DepartmentConfig
from hub.model import Case
from hub.services.dispatch import Dispatcher
from hub.services.intake import IntakeService
from hub.services.runtime import Hub
from hub.testing.generator import CaseGenerator
from hub.testing.harness import SimulatedCity
from tests.services.test_crash import delivered, start_worker, stop, wait_for, write_config


def sanitation_cases(hub: Hub, n: int, *, seed: int) -> list[Case]:
    generated = CaseGenerator(hub.mappings, seed=seed).generate(n * 30)
    routed = (c for c in generated if (r := hub.mappings.route(c)) and r.department == "sanitation")
    cases = list(itertools.islice(routed, n))
    assert len(cases) == n
    results = IntakeService(hub).submit_many(cases)
    return [r.case for r in results]


def assert_exactly_once(hub: Hub, city: SimulatedCity, hub_ids: list[str]) -> None:
    records = city.state("sanitation")["records"]
    per_case = {h: [r for r in records if r["CaseRef"] == h] for h in hub_ids}
    assert {r["CaseRef"] for r in records} <= set(hub_ids), "records the hub never sent"
    with hub.uow() as uow:
        for hub_id, found in per_case.items():
            order = uow.work_orders.get(hub_id, "sanitation")
            assert order is not None
            if order.delivery_state.value != "delivered":
                reasons = [i.last_error_message for i in uow.outbox.for_case(hub_id)]
                pytest.fail(f"{hub_id} is {order.delivery_state.value}: {reasons}")
            assert len(found) == 1, f"{hub_id}: {len(found)} contractor jobs"
            assert order.external_id and order.external_id.startswith("WO_")


async def test_cases_with_sftp_faults_are_delivered_once_and_closed(
    city: SimulatedCity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = SanitationHarness()
    sim = city.simulator("sanitation")
    for name, value in harness.env.items():
        monkeypatch.setenv(name, value)
    harness.sim = sim  # type: ignore[assignment]
    sim.start_sftp(tmp_path / "host_key")  # type: ignore[attr-defined]
    config = city.config()
    config.departments["sanitation"] = DepartmentConfig(
        adapter="sanitation",
        settings={
            **harness.settings(""),
            "timeout_seconds": 0.5,
            "pending_grace_seconds": 1.0,
            "batch_max_rows": 4,
        },
        delivery=city.delivery,
    )
    hub = Hub(config, database=city.database_url)
    cases = sanitation_cases(hub, 60, seed=5)
    sim.set_faults(
        {"error_5xx": 0.08, "timeout_after_commit": 0.05, "hang_seconds": 0.8, "seed": 11}
    )
    stats = await Dispatcher(hub, worker_id="w").run(until_empty=True, timeout=40)
    sim.set_faults("none")
    assert stats.attempts["retry"] > 0, f"no fault struck: {stats.as_dict()}"
    assert_exactly_once(hub, city, [c.hub_id for c in cases])
    # Status back: every job closed by the crew reaches the adapter as an event.
    sim.advance(100, close=True)
    adapter = hub.adapter("sanitation")
    page = await adapter.poll_changes(datetime.now(UTC) - timedelta(minutes=5))
    closed = {e.hub_reference for e in page.events if e.raw_code != "ACK"}
    assert closed == {c.hub_id for c in cases}
    await hub.aclose()
    hub.dispose()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_worker_killed_mid_batch_loses_and_duplicates_nothing(
    city: SimulatedCity, tmp_path: Path
) -> None:
    hub = city.hub()
    cases = sanitation_cases(hub, 150, seed=7)
    config = write_config(city, tmp_path / "hub.yaml", lease_seconds=2)
    raw = config.read_text().replace("batch_max_wait_seconds: 0.1", "batch_max_wait_seconds: 0.3")
    config.write_text(raw)
    first = start_worker(city, config, "doomed")
    try:
        wait_for(lambda: delivered(hub) >= 20, timeout=60, what="first deliveries")
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
    assert_exactly_once(hub, city, [c.hub_id for c in cases])
    hub.dispose()
