"""Interval jobs (status polls and plugins' periodic jobs) share one path: each firing claims
the epoch-grid slot of now in ``job_runs``, so of all processes exactly one runs it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hub.adapters import Transient
from hub.model import PeriodicJob
from hub.services.runtime import Hub
from hub.services.scheduler import EPOCH, Scheduler, interval_slot
from hub.store import tables as t
from hub.testing.harness import SimulatedCity, simulated_city

pytestmark = pytest.mark.timeout(120)

NOON = datetime(2026, 3, 2, 12, 0, 10, tzinfo=UTC)


@pytest.fixture
def city(tmp_path: Path, db_url: str) -> Iterator[SimulatedCity]:
    with simulated_city(tmp_path / "city", database_url=db_url, gis=True) as city:
        yield city


def runs(hub: Hub) -> list[tuple[str, str, str, str | None, dict[str, Any]]]:
    j = t.job_runs.c
    with hub.uow() as uow:
        query = select(j.job, j.slot, j.claimed_by, j.outcome, j.detail).order_by(j.id)
        return [tuple(row) for row in uow.connection.execute(query)]  # type: ignore[misc]


async def test_poll_and_plugin_job_each_run_once_per_grid_slot(city: SimulatedCity) -> None:
    hub = city.hub()
    now = [NOON]
    ticks: list[str] = []

    async def tick(got: Hub) -> dict[str, Any]:
        assert got is hub
        ticks.append("tick")
        return {"ticked": len(ticks)}

    job = PeriodicJob(name="test:tick", every_seconds=60, run=tick)
    first, second = (
        Scheduler(hub, worker_id=w, clock=lambda: now[0], poll_interval=3600) for w in "ab"
    )
    assert await first.periodic(job) is True
    now[0] = NOON + timedelta(seconds=15)  # the other process fires a little later: same slot
    assert await second.periodic(job) is False
    assert await second.poll("publicworks") is True
    assert await first.poll("publicworks") is False
    now[0] = NOON + timedelta(seconds=60)  # the next minute: a new slot of the tick only
    assert await second.periodic(job) is True
    assert await first.poll("publicworks") is False

    assert ticks == ["tick", "tick"]
    minute, hour = interval_slot(NOON, 60), interval_slot(NOON, 3600)
    later = interval_slot(NOON + timedelta(seconds=60), 60)
    assert later != minute
    got = runs(hub)
    assert [row[:4] for row in got] == [
        ("test:tick", minute, "a", "ok"),
        ("poll:publicworks", hour, "b", "ok"),
        ("test:tick", later, "b", "ok"),
    ]
    assert got[0][4] == {"ticked": 1} and got[2][4] == {"ticked": 2}
    assert first.ran == [("test:tick", minute)]
    assert second.ran == [("poll:publicworks", hour), ("test:tick", later)]
    await hub.aclose()
    hub.dispose()


async def test_a_failing_interval_job_is_recorded_and_its_next_slot_runs(
    city: SimulatedCity,
) -> None:
    hub = city.hub()
    now = [NOON]

    async def broken(got: Hub) -> None:
        raise RuntimeError("no luck")

    job = PeriodicJob(name="test:broken", every_seconds=30, run=broken)
    scheduler = Scheduler(hub, worker_id="w", clock=lambda: now[0])
    assert await scheduler.periodic(job) is True  # claimed and ran, though it failed
    now[0] = NOON + timedelta(seconds=30)
    assert await scheduler.periodic(job) is True
    outcomes = [(row[3], row[4]) for row in runs(hub)]
    assert outcomes == [("failed", {"error": "RuntimeError: no luck"})] * 2
    hub.dispose()


async def test_a_department_failure_is_one_warning_line_and_an_unexpected_one_a_traceback(
    city: SimulatedCity, caplog: pytest.LogCaptureFixture
) -> None:
    """A classified department failure (an injected 503 under a poll) is routine for an
    operator: one WARNING line. Anything else is a bug: ERROR with its traceback."""
    hub = city.hub()

    async def department_down(got: Hub) -> None:
        raise Transient("publicworks Search: HTTP 503", status_code=503)

    async def broken(got: Hub) -> None:
        raise RuntimeError("no luck")

    scheduler = Scheduler(hub, worker_id="w", clock=lambda: NOON)
    with caplog.at_level("WARNING", logger="hub.services.scheduler"):
        await scheduler.periodic(
            PeriodicJob(name="test:down", every_seconds=30, run=department_down)
        )
        await scheduler.periodic(PeriodicJob(name="test:broken", every_seconds=30, run=broken))
    down, bug = caplog.records
    assert down.levelname == "WARNING" and down.exc_info is None
    assert "HTTP 503" in down.getMessage()
    assert bug.levelname == "ERROR" and bug.exc_info is not None
    assert [row[3] for row in runs(hub)] == ["failed", "failed"]  # both recorded on the run
    hub.dispose()


async def test_start_puts_every_interval_job_on_the_epoch_grid(city: SimulatedCity) -> None:
    hub = city.hub()
    scheduler = Scheduler(hub, worker_id="w", poll_interval=7.0)
    started = scheduler.start()
    try:
        jobs = {job.id: job for job in started.get_jobs()}
    finally:
        scheduler.shutdown()
    polls = {f"poll:{d}" for d in scheduler.sync.pollable()}
    plugins = {f"plugin:{j.name}": j.every_seconds for j in scheduler.plugin_jobs()}
    assert polls and "plugin:gis:release-overdue" in plugins
    assert set(jobs) == polls | set(plugins) | {"reconcile"}
    for job_id, job in jobs.items():
        assert (job.max_instances, job.coalesce) == (1, True), job_id
        if job_id == "reconcile":
            assert job.misfire_grace_time == 3600
            continue
        assert job.misfire_grace_time == 30, job_id
        assert job.trigger.start_date == EPOCH, job_id
        assert job.trigger.interval == timedelta(seconds=plugins.get(job_id, 7.0)), job_id
    assert {jobs[p].func for p in polls} == {scheduler.poll}
    assert {jobs[p].args for p in polls} == {(p.removeprefix("poll:"),) for p in polls}
    assert {jobs[p].func for p in plugins} == {scheduler.periodic}
    await hub.aclose()
    hub.dispose()
