"""The delivery engine against the real public-works simulator, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from time import perf_counter

import pytest

from hub.config import DepartmentConfig, WorkerConfig
from hub.model import CaseStatus, DeliveryState, WorkOrder, utcnow
from hub.services.dispatch import Dispatcher, DispatchStats, resume_department
from hub.services.intake import IntakeService
from hub.services.runtime import Hub
from hub.testing.harness import SimulatedCity
from tests.services.conftest import assert_exactly_once, department_records, feed

pytestmark = pytest.mark.timeout(180)


async def drain(hub, *, timeout: float = 90) -> Dispatcher:
    dispatcher = Dispatcher(hub, worker_id="test-worker")
    await dispatcher.run(until_empty=True, timeout=timeout)
    return dispatcher


async def test_cases_become_work_orders_and_the_timeline_records_each_attempt(
    city: SimulatedCity,
) -> None:
    hub = city.hub()
    cases = feed(hub, 20)
    await drain(hub)
    tally = assert_exactly_once(hub, city, [c.hub_id for c in cases])
    assert tally == {"delivered": 20, "dead": 0}
    with hub.uow() as uow:
        case = uow.cases.get(cases[0].hub_id)
        timeline = uow.timeline.for_case(case.hub_id)
    assert case.status is CaseStatus.IN_QUEUE
    kinds = [e.kind for e in timeline]
    assert kinds[:2] == ["received", "routed"] and kinds[-1] == "delivery_attempt"
    attempt = timeline[-1].detail
    assert attempt["outcome"] == "delivered" and attempt["request_digest"].startswith("sha256:")
    assert attempt["duration_ms"] > 0
    await hub.aclose()


async def test_same_source_request_twice_is_one_case_and_one_work_order(
    city: SimulatedCity,
) -> None:
    hub = city.hub()
    [case] = feed(hub, 1)
    again = case.model_copy(update={"hub_id": "ignored"})
    result = IntakeService(hub).submit(again)
    assert not result.created and result.case.hub_id == case.hub_id
    # sent again with another requested time (the id leads with it): found by its source
    later = case.requested_datetime + timedelta(hours=1)
    moved = case.model_copy(update={"hub_id": "ignored", "requested_datetime": later})
    [first, second] = IntakeService(hub).submit_many([moved, moved.model_copy()])
    assert not first.created and not second.created
    assert first.case.hub_id == second.case.hub_id == case.hub_id
    await drain(hub)
    assert city.state("publicworks")["create_calls"] == {case.hub_id: 1}
    await hub.aclose()


@pytest.mark.slow
async def test_500_cases_with_30_percent_faults_are_delivered_exactly_once(
    city: SimulatedCity,
) -> None:
    city.set_faults(
        "publicworks",
        {
            "error_5xx": 0.05,
            "rate_limit_429": 0.05,
            "timeout_after_commit": 0.05,
            "malformed": 0.05,
            "error_envelope": 0.05,
            "token_expiry": 0.05,
            "retry_after_seconds": 0.2,
            "hang_seconds": 1.0,
            "seed": 311,
        },
    )
    hub = city.hub()
    cases = feed(hub, 500, seed=5)
    dispatcher = await drain(hub, timeout=150)
    tally = assert_exactly_once(hub, city, [c.hub_id for c in cases])
    assert tally["delivered"] + tally["dead"] == 500
    assert tally["delivered"] >= 495  # 12 attempts at 30% faults: a dead letter is ~1e-6
    faults = city.state("publicworks")
    assert dispatcher.stats.attempts["retry"] > 100  # the faults really happened
    assert dispatcher.stats.attempts["adopted"] > 0 or faults["duplicates"] == {}
    await hub.aclose()


async def test_timeout_after_commit_is_adopted_by_lookup_not_created_twice(
    city: SimulatedCity,
) -> None:
    hub = city.hub()
    [warm_up] = feed(hub, 1, seed=99)
    await drain(hub)  # logged in: the token is cached, so the faults below hit the calls
    city.set_faults("publicworks", {"timeout_after_commit": 1.0, "hang_seconds": 1.0})
    cases = feed(hub, 5)
    dispatcher = Dispatcher(hub, worker_id="w")
    await dispatcher.run(timeout=1.0)  # creates time out after the commit; lookups too
    assert dispatcher.stats.attempts["retry"] >= 5
    assert len(department_records(city)) == 6  # the department did commit every one
    city.set_faults("publicworks", "none")
    await drain(hub)
    assert_exactly_once(hub, city, [warm_up.hub_id] + [c.hub_id for c in cases])
    state = city.state("publicworks")
    assert set(state["create_calls"].values()) == {1}  # never a second create
    with hub.uow() as uow:
        outcomes = [
            e.detail["outcome"]
            for e in uow.timeline.for_case(cases[0].hub_id)
            if e.kind == "delivery_attempt"
        ]
    assert outcomes[-1] == "adopted" and set(outcomes[:-1]) == {"retry"}
    await hub.aclose()


async def test_429_retry_after_is_honoured_in_the_stored_schedule(city: SimulatedCity) -> None:
    city.set_faults("publicworks", {"rate_limit_429": 1.0, "retry_after_seconds": 30})
    hub = city.hub()
    [case] = feed(hub, 1)
    before = utcnow()
    await Dispatcher(hub, worker_id="w").run(drain=True)
    with hub.uow() as uow:
        [item] = uow.outbox.for_case(case.hub_id)
    assert item.state == "pending" and item.last_error_class == "transient"
    assert item.next_attempt_at >= before + timedelta(seconds=29)  # HTTP-date has 1 s grain
    await hub.aclose()


def delivery_attempts(hub: Hub, hub_id: str) -> list[dict]:
    with hub.uow() as uow:
        return [e.detail for e in uow.timeline.for_case(hub_id) if e.kind == "delivery_attempt"]


@pytest.mark.parametrize(
    ("fault", "looks_up"),
    [("rate_limit_429", False), ("error_5xx", True), ("timeout_after_commit", True)],
)
async def test_a_create_looks_up_before_retrying_unless_the_department_refused_it(
    city: SimulatedCity, fault: str, looks_up: bool
) -> None:
    """A 429 is the department's rate limiter refusing the call: nothing was created, so
    the retry creates at once. A 5xx or a lost answer may have created it: lookup first."""
    hub = city.hub()
    [warm_up] = feed(hub, 1, seed=99)
    await drain(hub)  # logged in: the token is cached, so the fault below hits the create
    city.set_faults("publicworks", {fault: 1.0, "retry_after_seconds": 0.2, "hang_seconds": 1.0})
    [case] = feed(hub, 1)
    await Dispatcher(hub, worker_id="w").run(drain=True)  # one attempt, then not yet due
    city.set_faults("publicworks", "none")
    await drain(hub)
    first, second = delivery_attempts(hub, case.hub_id)
    assert first["outcome"] == "retry"
    assert second["looked_up"] is looks_up
    expected = "adopted" if fault == "timeout_after_commit" else "delivered"
    assert second["outcome"] == expected
    assert_exactly_once(hub, city, [warm_up.hub_id, case.hub_id])
    await hub.aclose()


async def test_a_create_dead_lettered_after_a_lost_answer_is_looked_up_when_replayed(
    city: SimulatedCity,
) -> None:
    """The replay resets the attempt budget, not what the engine knows: the department
    committed the first create, so the replayed one adopts it."""
    city.delivery = city.delivery.model_copy(update={"max_attempts": 1})
    hub = city.hub()
    [warm_up] = feed(hub, 1, seed=99)
    await drain(hub)
    city.set_faults("publicworks", {"timeout_after_commit": 1.0, "hang_seconds": 1.0})
    [case] = feed(hub, 1)
    await drain(hub)
    with hub.uow() as uow:
        [item] = uow.outbox.list(state="dead")
        assert item.case_id == case.hub_id and item.maybe_applied
        assert uow.outbox.replay([item.id]) == 1
        uow.commit()
    city.set_faults("publicworks", "none")
    await drain(hub)
    assert [a["outcome"] for a in delivery_attempts(hub, case.hub_id)] == ["dead", "adopted"]
    assert city.state("publicworks")["create_calls"][case.hub_id] == 1
    assert_exactly_once(hub, city, [warm_up.hub_id, case.hub_id])
    await hub.aclose()


async def test_permanent_error_dead_letters_at_once_and_replay_delivers(
    city: SimulatedCity,
) -> None:
    simulator = city.simulator("publicworks")
    known = set(simulator.problem_codes)
    simulator.problem_codes = set()  # the department rejects every problem code (code 30)
    hub = city.hub()
    [case] = feed(hub, 1)
    await drain(hub)
    with hub.uow() as uow:
        [item] = uow.outbox.list(state="dead")
        order = uow.work_orders.get(case.hub_id, "publicworks")
        events = uow.timeline.for_case(case.hub_id)
    assert item.attempts == 1 and item.last_error_class == "permanent"
    assert order.delivery_state is DeliveryState.DEAD
    assert any(e.kind == "dead_lettered" and e.level.value == "alert" for e in events)
    simulator.problem_codes = known
    with hub.uow() as uow:
        assert uow.outbox.replay([item.id]) == 1
        uow.commit()
    await drain(hub)
    assert_exactly_once(hub, city, [case.hub_id])
    await hub.aclose()


async def test_auth_failure_pauses_the_department_and_alerts(
    city: SimulatedCity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_SIM_PUBLICWORKS_PASSWORD", "wrong-password")
    hub = city.hub()
    [case] = feed(hub, 1)
    await Dispatcher(hub, worker_id="w").run(drain=True)
    with hub.uow() as uow:
        health = uow.departments.get("publicworks")
        [item] = uow.outbox.for_case(case.hub_id)
        events = uow.timeline.for_case(case.hub_id)
    assert health.paused and "authentication failed" in health.pause_reason
    assert item.state == "pending" and item.attempts == 0  # a pause is not an attempt
    assert any(e.kind == "department_paused" and e.level.value == "alert" for e in events)
    assert "wrong-password" not in str([e.model_dump() for e in events])
    await hub.aclose()
    monkeypatch.setenv("HUB_SIM_PUBLICWORKS_PASSWORD", "hub-sim-password")
    resume_department(hub, "publicworks")
    with hub.uow() as uow:  # the pause delayed the row by a cool-down; make it due now
        uow.outbox.schedule_retry(item.id, at=utcnow(), error_class="", message="")
        uow.commit()
    hub = city.hub()
    await drain(hub)
    assert_exactly_once(hub, city, [case.hub_id])
    await hub.aclose()


async def test_a_config_problem_pauses_the_department_without_spending_attempts(
    city: SimulatedCity, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker started without a department's secret (its variable unset) cannot build
    the adapter: the department pauses with an alert naming the field, the rows keep their
    attempts (retrying cannot fix it), and the log carries no traceback."""
    monkeypatch.delenv("HUB_SIM_PUBLICWORKS_PASSWORD")
    hub = city.hub()
    assert hub.department_problems() == {
        "publicworks": [
            "config: departments.publicworks.settings: password: environment variable"
            " HUB_SIM_PUBLICWORKS_PASSWORD is not set"
        ]
    }
    cases = feed(hub, 3)
    await Dispatcher(hub, worker_id="w").run(drain=True)
    with hub.uow() as uow:
        health = uow.departments.get("publicworks")
        items = [i for c in cases for i in uow.outbox.for_case(c.hub_id)]
        events = uow.timeline.for_case(cases[0].hub_id)
    assert health.paused and "HUB_SIM_PUBLICWORKS_PASSWORD is not set" in health.pause_reason
    assert [(i.state, i.attempts) for i in items] == [("pending", 0)] * 3
    paused = [e for e in events if e.kind == "department_paused"]
    assert paused and paused[0].level.value == "alert"
    assert "Traceback" not in caplog.text and "unclassified" not in caplog.text
    assert city.state("publicworks")["create_calls"] == {}
    await hub.aclose()
    monkeypatch.setenv("HUB_SIM_PUBLICWORKS_PASSWORD", "hub-sim-password")
    resume_department(hub, "publicworks")
    with hub.uow() as uow:  # the pause delayed the rows by a cool-down; make them due now
        for item in items:
            uow.outbox.schedule_retry(item.id, at=utcnow(), error_class="", message="")
        uow.commit()
    hub = city.hub()
    assert hub.department_problems() == {}
    await drain(hub)
    assert_exactly_once(hub, city, [c.hub_id for c in cases])
    await hub.aclose()


async def test_an_unknown_adapter_name_is_a_config_problem(city: SimulatedCity) -> None:
    config = city.config()
    config.departments["publicworks"].adapter = "publicwork"  # a typo
    hub = Hub(config, database=city.database_url)
    [problem] = hub.department_problems()["publicworks"]
    assert "departments.publicworks.adapter: no adapter named 'publicwork'" in problem
    feed(hub, 1)
    await Dispatcher(hub, worker_id="w").run(drain=True)
    with hub.uow() as uow:
        health = uow.departments.get("publicworks")
    assert health.paused and "no adapter named 'publicwork'" in health.pause_reason
    await hub.aclose()


async def test_a_paused_department_does_not_hold_up_another(city: SimulatedCity) -> None:
    """'streets' is a second department on the same kind of system whose credentials
    are wrong: it pauses, public works keeps flowing."""
    config = city.config()
    streets = config.departments["publicworks"].model_copy(deep=True)
    streets.settings["password"] = {"file": str(city.directory / "streets-password")}
    (city.directory / "streets-password").write_text("not-the-password\n")
    config.departments["streets"] = DepartmentConfig(
        adapter="publicworks",
        settings=streets.settings,
        delivery=streets.delivery,
        mapping="publicworks",
    )
    hub = Hub(config, database=city.database_url)
    cases = feed(hub, 30)
    route_to_streets(hub, cases[:10])  # the first ten also need a streets work order
    await Dispatcher(hub, worker_id="w").run(drain=True, timeout=60)
    with hub.uow() as uow:
        healths = uow.departments.all()
        stats = uow.outbox.stats()
    assert healths["streets"].paused
    assert not healths.get("publicworks") or not healths["publicworks"].paused
    assert stats["publicworks"].pending == 0 and stats["streets"].pending == 10
    assert_exactly_once(hub, city, [c.hub_id for c in cases])
    await hub.aclose()


async def test_circuit_opens_on_an_outage_and_a_canary_closes_it(city: SimulatedCity) -> None:
    city.set_faults("publicworks", "outage")
    hub = city.hub()
    cases = feed(hub, 40)
    dispatcher = Dispatcher(hub, worker_id="w")
    await dispatcher.run(until_empty=True, timeout=2.0)
    with hub.uow() as uow:
        health = uow.departments.get("publicworks")
        opened = uow.timeline.count(kind="circuit_opened")
    assert health.circuit in ("open", "half_open") and opened >= 1
    attempts_during_outage = sum(dispatcher.stats.attempts.values())
    # 25 failures open it; then one canary per cool-down (0.5 s), not a flood.
    assert attempts_during_outage < 25 + 40
    city.set_faults("publicworks", "none")
    await drain(hub)
    with hub.uow() as uow:
        assert uow.departments.get("publicworks").circuit == "closed"
        assert uow.timeline.count(kind="circuit_closed") >= 1
    assert_exactly_once(hub, city, [c.hub_id for c in cases])
    await hub.aclose()


async def test_note_and_cancel_follow_the_create_in_order(city: SimulatedCity) -> None:
    hub = city.hub()
    [case] = feed(hub, 1)
    with hub.uow() as uow:
        for op, payload in [
            ("note", {"text": "Resident: it is getting worse"}),
            ("cancel", {"reason": "duplicate of another request"}),
        ]:
            uow.outbox.enqueue(
                case_id=case.hub_id,
                department="publicworks",
                operation=op,
                idempotency_key=f"{case.hub_id}:publicworks:{op}",
                payload=payload,
            )
        uow.commit()
    await drain(hub)
    [record] = department_records(city)[case.hub_id]
    assert record["Status"] == "Canceled"
    assert [c["Comments"] for c in record["comments"]][-1] == "Resident: it is getting worse"
    with hub.uow() as uow:
        done = [(i.operation, i.state) for i in uow.outbox.for_case(case.hub_id)]
    assert done == [("create", "done"), ("note", "done"), ("cancel", "done")]
    await hub.aclose()


def test_one_departments_backlog_does_not_hold_up_anothers_new_cases(
    city: SimulatedCity,
) -> None:
    """A claim shares the batch between departments instead of taking the oldest due rows
    of all: public works' queued backlog must not stand in front of a fresh streets case."""
    config = city.config()
    streets = config.departments["publicworks"]
    config.departments["streets"] = streets.model_copy(deep=True)
    hub = Hub(config, database=city.database_url)
    backlog = feed(hub, 40)
    route_to_streets(hub, backlog[:5], due=utcnow() + timedelta(milliseconds=1))  # newer
    later = utcnow() + timedelta(seconds=1)
    claimed = Dispatcher(hub, worker_id="w", clock=lambda: later)._turn([], 20)
    by_department = Counter(item.department for item, _, _ in claimed)
    assert by_department == {"publicworks": 15, "streets": 5}
    again = Dispatcher(hub, worker_id="w2", clock=lambda: later)._turn([], 100)
    assert len(again) == 25  # the rest of public works' backlog, nothing claimed twice
    assert {item.id for item, _, _ in again}.isdisjoint(item.id for item, _, _ in claimed)


def route_to_streets(hub: Hub, cases: list, due: datetime | None = None) -> None:
    """A 'streets' work order and its queued create for each case."""
    with hub.uow() as uow:
        for case in cases:
            uow.work_orders.add(WorkOrder(case_id=case.hub_id, department="streets"))
            uow.outbox.enqueue(
                case_id=case.hub_id,
                department="streets",
                operation="create",
                idempotency_key=f"{case.hub_id}:streets:create",
                due=due,
            )
        uow.commit()


class TurnCounter(Dispatcher):
    """Counts the turns that settled finished calls, and how many each settled."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.settled: list[int] = []

    def _turn(self, finished, capacity):
        if finished:
            self.settled.append(len(finished))
        return super()._turn(finished, capacity)


async def test_one_call_in_flight_still_settles_a_batch_per_turn(city: SimulatedCity) -> None:
    """With one call in flight a worker used to claim one row ahead, so every case paid a
    whole turn and its commit. It now claims up to a batch ahead at the calls' pace, and a
    turn settles what finished meanwhile: far fewer turns than cases, none stale."""
    config = city.config().model_copy(
        update={"worker": WorkerConfig(concurrency=1, idle_poll_seconds=0.05)}
    )
    hub = Hub(config, database=city.database_url)
    cases = feed(hub, 60)
    dispatcher = TurnCounter(hub, worker_id="one-at-a-time")
    await dispatcher.run(until_empty=True, timeout=90)
    assert assert_exactly_once(hub, city, [c.hub_id for c in cases]) == {
        "delivered": 60,
        "dead": 0,
    }
    assert sum(dispatcher.settled) == 60
    assert len(dispatcher.settled) <= 20, dispatcher.settled
    assert dispatcher.stats.stale_claims == 0
    await hub.aclose()


def test_claim_ahead_follows_the_calls_pace(city: SimulatedCity) -> None:
    def dispatcher(concurrency: int, **kwargs) -> Dispatcher:
        worker = WorkerConfig(concurrency=concurrency, batch_size=64)
        hub = Hub(city.config().model_copy(update={"worker": worker}), database=city.database_url)
        return Dispatcher(hub, **kwargs)

    one = dispatcher(1)
    assert (one.prefetch(), one.gather_target()) == (1, 1)  # no call seen yet: one per slot
    one._observe_call(0.002)  # 500 calls a second: a batch goes through in well under 1 s
    assert (one.prefetch(), one.gather_target()) == (64, 16)
    one.call_seconds = 0.1  # ten calls a second: ten rows ahead
    assert one.prefetch() == 10
    one.call_seconds = 5.0  # a slow department: back to one row per slot
    assert one.prefetch() == 1
    busy = dispatcher(128)
    busy._observe_call(0.001)
    assert (busy.prefetch(), busy.gather_target()) == (64, 64)  # never beyond a batch
    assert dispatcher(1, prefetch=3).prefetch() == 3


class Timed(Dispatcher):
    """Times each turn from outside and keeps every attempt, to check the run's stats."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.turn_walls: list[float] = []
        self.seen: list = []

    def _turn(self, finished, capacity):
        started = perf_counter()
        try:
            return super()._turn(finished, capacity)
        finally:
            self.turn_walls.append(perf_counter() - started)

    async def _attempt(self, item, case, order):
        attempt = await super()._attempt(item, case, order)
        self.seen.append(attempt)
        return attempt


async def test_run_stats_say_where_the_workers_time_went(city: SimulatedCity) -> None:
    """`hub worker` prints these when it stops and the dispatch benchmark reads them: the
    call slots' use tells a slow department from a worker held back by its own turns."""
    worker = WorkerConfig(concurrency=4, idle_poll_seconds=0.05)
    hub = Hub(city.config().model_copy(update={"worker": worker}), database=city.database_url)
    feed(hub, 30)
    dispatcher = Timed(hub, worker_id="timed")
    started = perf_counter()
    stats = await dispatcher.run(until_empty=True, timeout=90)
    wall = perf_counter() - started
    await hub.aclose()

    assert stats.turns == len(dispatcher.turn_walls) > 0
    assert 0 < stats.turn_seconds <= sum(dispatcher.turn_walls)
    assert 0 < stats.turn_cpu_seconds <= stats.turn_seconds + 0.001
    durations = sum(a.duration_ms for a in dispatcher.seen) / 1000
    assert len(dispatcher.seen) == 30
    assert stats.slot_seconds == pytest.approx(durations, abs=0.001)
    assert 0 < stats.run_seconds <= wall
    expected_share = stats.slot_seconds / (stats.run_seconds * 4)
    assert stats.slots_busy() == pytest.approx(expected_share)
    assert 0 < stats.slots_busy() <= 1
    printed = stats.as_dict()  # what `hub worker --drain` prints, extended
    assert printed["turns"] == stats.turns and printed["delivered"] == 30
    assert printed["slots_busy"] == round(stats.slots_busy(), 3)
    assert printed["turn_cpu_seconds"] == round(stats.turn_cpu_seconds, 3)


def test_slots_busy_is_the_mean_share_of_slots_in_use() -> None:
    stats = DispatchStats(concurrency=8, run_seconds=2.0, slot_seconds=4.0)
    assert stats.slots_busy() == 0.25
    assert DispatchStats(concurrency=8).slots_busy() == 0.0  # no run yet
    assert DispatchStats(concurrency=1, run_seconds=1.0, slot_seconds=1.5).slots_busy() == 1.0
