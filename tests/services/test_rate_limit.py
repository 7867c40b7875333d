"""Cluster-wide department limits: the database's token bucket and leased-row count bound
what all workers together send (rate_limit_per_second, max_in_flight)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from hub.config import DeliveryPolicy
from hub.model import utcnow
from hub.services.dispatch import Dispatcher
from hub.testing.harness import FAST_DELIVERY, simulated_city
from hub.testing.simulators.base import SimulatorServer
from hub.testing.simulators.publicworks import PublicWorksSimulator
from hub.testing.soak import RequestLog, WorkerPool, steady_rate, write_config
from tests.services.conftest import feed


def limited(**limits: float | int) -> DeliveryPolicy:
    return FAST_DELIVERY.model_copy(update=limits)


def test_a_claim_takes_at_most_the_tokens_in_the_bucket(tmp_path: Path, db_url: str) -> None:
    policy = limited(rate_limit_per_second=40.0)
    with simulated_city(
        tmp_path / "city", database_url=db_url, delivery=policy, gis=False, payments=False
    ) as city:
        hub = city.hub()
        feed(hub, 40)
        now = utcnow()
        first = Dispatcher(hub, worker_id="a", clock=lambda: now)
        second = Dispatcher(hub, worker_id="b", clock=lambda: now)
        assert len(first._turn([], 64)) == 10  # a full bucket: a quarter second's worth
        assert second._turn([], 64) == []  # the other worker finds it empty
        later = now + timedelta(seconds=0.1)
        second.clock = lambda: later
        assert len(second._turn([], 64)) == 4  # refilled at 40/s for a tenth of a second
        hub.dispose()


def test_the_bucket_grows_with_slow_turns_up_to_half_a_second(tmp_path: Path, db_url: str) -> None:
    # Turns serialised on the department's row lock can come further apart than a quarter
    # second under a deep queue; a quarter-second bucket would then spill tokens and serve
    # the department under its limit. The bucket holds twice the recent turn time.
    policy = limited(rate_limit_per_second=40.0)
    with simulated_city(
        tmp_path / "city", database_url=db_url, delivery=policy, gis=False, payments=False
    ) as city:
        hub = city.hub()
        feed(hub, 120)
        now = utcnow()
        worker = Dispatcher(hub, worker_id="a", clock=lambda: now)
        worker.turn_seconds = 0.2  # slow turns: the bucket holds 0.4 s
        assert worker.burst_seconds() == pytest.approx(0.4)
        assert len(worker._turn([], 64)) == 16  # a fresh bucket: 0.4 s at 40/s
        later = now + timedelta(seconds=0.35)
        worker.clock = lambda: later
        worker.turn_seconds = 0.2
        assert len(worker._turn([], 64)) == 14  # 0.35 s of refill, none spilled
        much_later = later + timedelta(seconds=10)
        worker.clock = lambda: much_later
        worker.turn_seconds = 30.0  # however slow: at most half a second's worth
        assert worker.burst_seconds() == 0.5
        assert len(worker._turn([], 64)) == 20
        hub.dispose()


def test_fast_turns_keep_the_quarter_second_bucket(tmp_path: Path, db_url: str) -> None:
    with simulated_city(
        tmp_path / "city",
        database_url=db_url,
        delivery=limited(rate_limit_per_second=40.0),
        gis=False,
        payments=False,
    ) as city:
        hub = city.hub()
        feed(hub, 4)
        worker = Dispatcher(hub, worker_id="a")
        for _ in range(5):
            worker._turn([], 64)
        assert worker.turn_seconds < 0.125  # a test database turns in milliseconds
        assert worker.burst_seconds() == 0.25
        hub.dispose()


def test_max_in_flight_counts_every_workers_leases(tmp_path: Path, db_url: str) -> None:
    with simulated_city(
        tmp_path / "city",
        database_url=db_url,
        delivery=limited(max_in_flight=3),
        gis=False,
        payments=False,
    ) as city:
        hub = city.hub()
        feed(hub, 10)
        assert len(Dispatcher(hub, worker_id="a")._turn([], 64)) == 3
        assert Dispatcher(hub, worker_id="b")._turn([], 64) == []
        hub.dispose()


def run_two_workers(tmp_path: Path, db_url: str, cases: int, **limits: float | int) -> RequestLog:
    """Two `hub worker` processes against a public-works simulator that logs each create."""
    simulator = PublicWorksSimulator(faults={"latency_ms": 40})
    log = RequestLog(simulator.app)
    with (
        simulated_city(tmp_path / "city", database_url=db_url, gis=False, payments=False) as city,
        SimulatorServer(log) as server,
    ):
        city.servers = {"publicworks": server}
        hub = city.hub()
        feed(hub, cases)
        config = write_config(
            city, tmp_path / "hub.yaml", worker={"idle_poll_seconds": 0.05}, delivery=limits
        )
        pool = WorkerPool(config, db_url, tmp_path / "logs", scheduler=False)
        pool.start_all(2)
        try:
            deadline = time.monotonic() + 90
            while len(log.stamps) < cases and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            pool.stop()
        hub.dispose()
    assert len(log.stamps) == cases, "not every case was delivered"
    return log


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_workers_together_keep_to_the_rate_limit(tmp_path: Path, db_url: str) -> None:
    log = run_two_workers(tmp_path, db_url, 140, rate_limit_per_second=20.0)
    rate = steady_rate(sorted(log.stamps))
    assert 18.0 <= rate <= 22.0, f"{rate:.1f}/s against a limit of 20/s"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_workers_together_keep_to_max_in_flight(tmp_path: Path, db_url: str) -> None:
    log = run_two_workers(tmp_path, db_url, 60, max_in_flight=3)
    assert log.peak <= 3, f"{log.peak} calls in flight at once against a limit of 3"
