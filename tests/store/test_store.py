"""Store round trips and queue semantics, on SQLite and on PostgreSQL."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from hub.model import (
    Attachment,
    Case,
    CaseEvent,
    CaseStatus,
    Closure,
    DeliveryState,
    EventLevel,
    Requester,
    WorkOrder,
)
from hub.store.db import make_engine
from hub.store.repository import DepartmentHealth, OutboxState, QueueStats, StaleCase
from hub.store.uow import UnitOfWork

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def a_case(n: int = 1, **kw) -> Case:
    return Case(
        source_system="crm",
        source_id=f"SR-{n}",
        service_code="POTHOLE",
        description="Deep pothole",
        lat=42.35,
        long=-71.06,
        address_string="1 Main St",
        requester=Requester(first_name="Ada", email="ada@example.org"),
        evidence=[
            Attachment(
                url="https://x.invalid/p.jpg",
                content_type="image/jpeg",
                size=10,
                digest=Attachment.digest_of(b"0123456789"),
            )
        ],
        attributes={"ward": "3", "depth_cm": 12},
        **kw,
    )


def enqueue(
    uow: UnitOfWork, case_id: str, op: str = "create", dept: str = "publicworks", due: datetime = T0
) -> None:
    assert uow.outbox.enqueue(
        case_id=case_id,
        department=dept,
        operation=op,
        idempotency_key=f"{case_id}:{dept}:{op}",
        due=due,
    )


def test_case_round_trip_keeps_every_field(engine) -> None:
    case = a_case(closure=Closure(code="repaired", text="Filled"))
    with UnitOfWork(engine) as uow:
        assert uow.cases.add(case, token="tok-1")
        uow.commit()
    with UnitOfWork(engine) as uow:
        loaded = uow.cases.get(case.hub_id)
        assert loaded == case
        assert loaded.requester == case.requester  # PII column round-trips
        assert uow.cases.get_by_source("crm", "SR-1") == case
        assert uow.cases.get_by_token("tok-1") == case


def test_add_is_idempotent(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        assert uow.cases.add(case)
        assert not uow.cases.add(case)
        uow.commit()
        assert uow.cases.count() == 1


def test_uncommitted_work_is_rolled_back(engine) -> None:
    with UnitOfWork(engine) as uow:
        uow.cases.add(a_case())
    with UnitOfWork(engine) as uow:
        assert uow.cases.count() == 0


def test_save_detects_a_concurrent_change(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        uow.commit()
    with UnitOfWork(engine) as uow:
        first = uow.cases.get(case.hub_id)
        version = first.version
        first.transition(CaseStatus.ROUTED)
        uow.cases.save(first, expected_version=version)
        uow.commit()
        stale = a_case()
        stale.transition(CaseStatus.CANCELLED)
        with pytest.raises(StaleCase):
            uow.cases.save(stale, expected_version=1)


def test_timeline_keeps_order_and_detail(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        uow.timeline.append(
            CaseEvent(case_id=case.hub_id, kind="received", message="in"),
            CaseEvent(
                case_id=case.hub_id,
                kind="delivery_attempt",
                level=EventLevel.WARNING,
                detail={"attempt": 1, "error_class": "transient"},
            ),
        )
        uow.commit()
    with UnitOfWork(engine) as uow:
        events = uow.timeline.for_case(case.hub_id)
    assert [e.kind for e in events] == ["received", "delivery_attempt"]
    assert events[1].detail == {"attempt": 1, "error_class": "transient"}
    assert events[1].level is EventLevel.WARNING and events[1].at.tzinfo is not None


def test_work_order_unique_per_case_and_department(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        assert uow.work_orders.add(WorkOrder(case_id=case.hub_id, department="publicworks"))
        assert not uow.work_orders.add(WorkOrder(case_id=case.hub_id, department="publicworks"))
        uow.work_orders.update(
            case.hub_id,
            "publicworks",
            external_id="77",
            delivery_state=DeliveryState.DELIVERED,
            raw_status="New",
        )
        uow.commit()
        order = uow.work_orders.by_external_ids("publicworks", ["77"])["77"]
    assert order.case_id == case.hub_id and order.delivery_state is DeliveryState.DELIVERED


def test_outbox_enqueue_is_idempotent_by_key(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        enqueue(uow, case.hub_id)
        assert not uow.outbox.enqueue(
            case_id=case.hub_id,
            department="publicworks",
            operation="create",
            idempotency_key=f"{case.hub_id}:publicworks:create",
        )
        uow.commit()
        assert uow.outbox.count() == 1


def test_claim_leases_due_rows_once(engine) -> None:
    cases = [a_case(n) for n in range(5)]
    with UnitOfWork(engine) as uow:
        for case in cases:
            uow.cases.add(case)
            enqueue(uow, case.hub_id)
        future = a_case(99)
        uow.cases.add(future)
        enqueue(uow, future.hub_id, due=T0 + LEASE)
        uow.commit()
    with UnitOfWork(engine) as uow:
        first = uow.outbox.claim(worker="w1", limit=3, lease=LEASE, now=T0)
        second = uow.outbox.claim(worker="w2", limit=10, lease=LEASE, now=T0)
        uow.commit()
    assert len(first) == 3 and len(second) == 2  # the future row is not due
    assert {i.id for i in first}.isdisjoint({i.id for i in second})
    assert all(i.attempts == 1 and i.locked_by == "w1" for i in first)


def test_expired_lease_is_reclaimed_and_old_worker_is_fenced(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        enqueue(uow, case.hub_id)
        uow.commit()
    with UnitOfWork(engine) as uow:
        [item] = uow.outbox.claim(worker="dead-worker", limit=1, lease=LEASE, now=T0)
        assert uow.outbox.claim(worker="w2", limit=1, lease=LEASE, now=T0 + LEASE / 2) == []
        [again] = uow.outbox.claim(worker="w2", limit=1, lease=LEASE, now=T0 + LEASE * 2)
        assert again.id == item.id and again.attempts == 2
        assert not uow.outbox.mark_done(item.id, worker="dead-worker")  # fenced off
        assert uow.outbox.mark_done(item.id, worker="w2")
        uow.commit()
        assert uow.outbox.get(item.id).state == OutboxState.DONE


def test_maybe_applied_is_set_by_an_unsure_attempt_or_an_expired_lease_and_survives_replay(
    engine,
) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        enqueue(uow, case.hub_id)
        uow.commit()

    def claim(now: datetime):
        with UnitOfWork(engine) as uow:
            [item] = uow.outbox.claim(worker="w", limit=1, lease=LEASE, now=now)
            uow.commit()
        return item

    def retry(item, *, refused: bool, now: datetime) -> None:
        with UnitOfWork(engine) as uow:
            uow.outbox.schedule_retry(
                item.id, at=now, error_class="transient", message="x", worker="w", refused=refused
            )
            uow.commit()

    first = claim(T0)
    assert not first.maybe_applied  # never sent before
    retry(first, refused=True, now=T0)  # a 429: the department did nothing
    second = claim(T0)
    assert second.attempts == 2 and not second.maybe_applied
    # The worker dies: its lease expires and the next claim cannot know what it sent.
    third = claim(T0 + LEASE * 2)
    assert third.attempts == 3 and third.maybe_applied
    retry(third, refused=True, now=T0 + LEASE * 2)  # a refusal later does not clear it
    fourth = claim(T0 + LEASE * 2)
    assert fourth.maybe_applied
    with UnitOfWork(engine) as uow:
        uow.outbox.mark_dead(fourth.id, error_class="transient", message="gave up", worker="w")
        assert uow.outbox.replay([fourth.id], now=T0 + LEASE * 3) == 1
        uow.commit()
    replayed = claim(T0 + LEASE * 3)
    assert replayed.attempts == 1 and replayed.maybe_applied  # a replay keeps it


def test_operations_for_one_case_and_department_run_in_order(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        for op in ("create", "note", "attach", "cancel"):
            enqueue(uow, case.hub_id, op)
        enqueue(uow, case.hub_id, "create", dept="sanitation")  # other department: independent
        uow.commit()
    order = []
    for _step in range(5):
        with UnitOfWork(engine) as uow:
            claimed = uow.outbox.claim(worker="w", limit=10, lease=LEASE, now=T0)
            for item in claimed:
                uow.outbox.mark_done(item.id, worker="w")
            uow.commit()
        order.append(sorted(f"{i.department}:{i.operation}" for i in claimed))
        if not claimed:
            break
    assert order[0] == ["publicworks:create", "sanitation:create"]
    assert order[1:4] == [["publicworks:note"], ["publicworks:attach"], ["publicworks:cancel"]]


def test_a_dead_predecessor_blocks_later_operations_until_replayed(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        enqueue(uow, case.hub_id, "create")
        enqueue(uow, case.hub_id, "note")
        uow.commit()
    with UnitOfWork(engine) as uow:
        [create] = uow.outbox.claim(worker="w", limit=10, lease=LEASE, now=T0)
        uow.outbox.mark_dead(create.id, error_class="permanent", message="bad field", worker="w")
        assert uow.outbox.claim(worker="w", limit=10, lease=LEASE, now=T0) == []
        assert [i.id for i in uow.outbox.list(state=OutboxState.DEAD)] == [create.id]
        assert uow.outbox.replay(None, now=T0) == 1
        [again] = uow.outbox.claim(worker="w", limit=10, lease=LEASE, now=T0)
        assert again.id == create.id and again.attempts == 1
        uow.commit()


def test_retry_schedules_and_excluded_departments_wait(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        enqueue(uow, case.hub_id)
        uow.commit()
    with UnitOfWork(engine) as uow:
        assert (
            uow.outbox.claim(worker="w", limit=5, lease=LEASE, now=T0, exclude=["publicworks"])
            == []
        )
        [item] = uow.outbox.claim(worker="w", limit=5, lease=LEASE, now=T0)
        later = T0 + timedelta(seconds=30)
        assert uow.outbox.schedule_retry(
            item.id, at=later, error_class="transient", message="503", worker="w"
        )
        assert (
            uow.outbox.claim(worker="w", limit=5, lease=LEASE, now=T0 + timedelta(seconds=5)) == []
        )
        stats = uow.outbox.stats(now=T0)["publicworks"]
        assert (stats.pending, stats.due, stats.oldest_due) == (1, 0, later)
        [again] = uow.outbox.claim(worker="w", limit=5, lease=LEASE, now=later)
        assert again.last_error_class == "transient"
        uow.commit()


def test_held_rows_wait_until_released(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        uow.outbox.enqueue(
            case_id=case.hub_id,
            department="publicworks",
            operation="create",
            idempotency_key="k",
            due=T0,
            state=OutboxState.HELD,
        )
        assert uow.outbox.claim(worker="w", limit=5, lease=LEASE, now=T0) == []
        assert uow.outbox.release_held(case.hub_id, now=T0) == 1
        assert len(uow.outbox.claim(worker="w", limit=5, lease=LEASE, now=T0)) == 1
        uow.commit()


def test_job_slot_is_claimed_once(engine) -> None:
    with UnitOfWork(engine) as uow:
        assert uow.job_runs.claim("poll:publicworks", "2026-05-01T12:00", worker="a")
        assert not uow.job_runs.claim("poll:publicworks", "2026-05-01T12:00", worker="b")
        uow.job_runs.finish("poll:publicworks", "2026-05-01T12:00", outcome="ok", detail={"n": 3})
        uow.commit()


def test_sync_cursor_and_department_health_upsert(engine) -> None:
    with UnitOfWork(engine) as uow:
        assert uow.cursors.get("publicworks") is None
        uow.cursors.set("publicworks", T0)
        uow.cursors.set("publicworks", T0 + LEASE)
        health = DepartmentHealth(
            "publicworks", circuit="open", consecutive_failures=4, retry_at=T0
        )
        uow.departments.put(health)
        uow.commit()
    with UnitOfWork(engine) as uow:
        assert uow.cursors.get("publicworks") == T0 + LEASE
        assert uow.departments.get("publicworks").consecutive_failures == 4
        assert uow.departments.try_begin_canary("publicworks", now=T0, until=T0 + LEASE)
        assert not uow.departments.try_begin_canary("publicworks", now=T0, until=T0 + LEASE)
        assert uow.departments.get("publicworks").circuit == "half_open"
        uow.commit()


def test_an_older_department_status_never_overwrites_a_newer_one(engine) -> None:
    case = a_case()
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        uow.work_orders.add(WorkOrder(case_id=case.hub_id, department="publicworks"))
        apply = uow.work_orders.apply_department_status
        assert apply(case.hub_id, "publicworks", sequence="2026-05-01T12:02", raw_status="Closed")
        assert not apply(case.hub_id, "publicworks", sequence="2026-05-01T12:01", raw_status="New")
        uow.commit()
        order = uow.work_orders.get(case.hub_id, "publicworks")
    assert (order.raw_status, order.last_sequence) == ("Closed", "2026-05-01T12:02")


def test_an_equal_department_status_wins_only_the_ties_it_follows(engine) -> None:
    case = a_case()
    at = "2026-05-01T12:00"  # a department clock in whole seconds: every event ties
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        uow.work_orders.add(WorkOrder(case_id=case.hub_id, department="publicworks"))
        apply = functools.partial(uow.work_orders.apply_department_status, case.hub_id,
                                  "publicworks", sequence=at)  # fmt: skip
        assert apply(follows=[], raw_status="Dispatch", mapped_status="in_queue")  # first
        # A code that does not follow the recorded status loses the tie ...
        assert not apply(follows=["resolved"], raw_status="New", mapped_status="in_queue")
        # ... one that does wins (adopting the record), and so does the same raw code again.
        assert apply(
            follows=["in_queue", "onsite"], raw_status="Closed", mapped_status="resolved",
            external_id="WO-7", delivery_state=DeliveryState.DELIVERED,
        )  # fmt: skip
        assert apply(follows=[], raw_status="Closed", mapped_status="resolved")
        assert apply(raw_status="Closed")  # follows None: the event always wins a tie
        uow.commit()
        order = uow.work_orders.get(case.hub_id, "publicworks")
    assert (order.raw_status, order.mapped_status, order.external_id, order.delivery_state) == (
        "Closed", CaseStatus.RESOLVED, "WO-7", DeliveryState.DELIVERED,
    )  # fmt: skip
    assert order.last_sequence == at


def test_claim_each_on_postgresql_reads_only_what_it_claims(postgres_url: str) -> None:
    """The one-statement claim must walk each department's rows in the index's order and
    stop at its limit. When the LATERAL join's department compared as another type, it
    read, probed and sorted every pending row of the department on every claim."""
    engine = make_engine(postgres_url)
    with UnitOfWork(engine) as uow:  # sanitation's 300 rows are due before public works' 300
        for n in range(600):
            case = a_case(n)
            uow.cases.add(case)
            department = "sanitation" if n < 300 else "publicworks"
            enqueue(uow, case.hub_id, dept=department, due=T0 - timedelta(seconds=600 - n))
        uow.commit()  # no ANALYZE: right after a bulk intake the planner has no statistics
    with statements_sent(engine) as sent, UnitOfWork(engine) as uow:
        claimed = uow.outbox.claim_each(
            worker="w", departments=["publicworks"], limit=5, lease=LEASE, now=T0
        )
    assert len(claimed) == 5
    [(sql, params)] = [(q, p) for q, p in sent if "picked" in q]
    with engine.connect() as conn:
        [[plan]] = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).one()
    engine.dispose()
    nodes = list(plan_nodes(plan["Plan"]))
    assert "Sort" not in {node["Node Type"] for node in nodes}
    scans = [n for n in nodes if n.get("Relation Name") == "outbox" and n.get("Alias") != "prior"]
    read = [n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0) for n in scans]
    assert read and max(read) <= 10, scans  # 5 claimed (+ the row found by id)


@contextmanager
def statements_sent(engine) -> Iterator[list[tuple[str, Any]]]:
    """(SQL, parameters) of every statement the engine sends inside the block."""
    sent: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, *args) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def test_claim_each_takes_up_to_the_limit_from_every_department_in_due_order(engine) -> None:
    cases = [a_case(n) for n in range(1, 9)]
    with UnitOfWork(engine) as uow:
        for n, case in enumerate(cases):
            uow.cases.add(case)
            dept = "publicworks" if n < 5 else "sanitation"  # 5 and 3 rows
            enqueue(uow, case.hub_id, dept=dept, due=T0 - timedelta(seconds=10 - n))
        enqueue(uow, cases[0].hub_id, dept="codeenforcement", due=T0 + timedelta(seconds=5))
        uow.commit()
    with UnitOfWork(engine) as uow:
        first = uow.outbox.claim_each(
            worker="w1",
            departments=["publicworks", "sanitation", "codeenforcement", "nobody"],
            limit=2,
            lease=LEASE,
            now=T0,
        )
        uow.commit()
    by_department = {}
    for item in first:
        by_department.setdefault(item.department, []).append(item.case_id)
    assert by_department == {  # the two earliest due of each; not-yet-due rows wait
        "publicworks": [cases[0].hub_id, cases[1].hub_id],
        "sanitation": [cases[5].hub_id, cases[6].hub_id],
    }
    assert all(item.locked_by == "w1" and item.attempts == 1 for item in first)
    with UnitOfWork(engine) as uow:
        second = uow.outbox.claim_each(
            worker="w2", departments=["publicworks", "sanitation"], limit=10, lease=LEASE, now=T0
        )
        uow.commit()
    assert len(second) == 4  # the rest, none of them leased twice
    assert {i.id for i in second}.isdisjoint(i.id for i in first)


def test_advancing_cases_on_sqlite_searches_by_key_not_every_case(tmp_path) -> None:
    """Every turn moves its delivered cases forward in one UPDATE. On a row value alone,
    (hub_id, version) IN (...), SQLite scanned the whole cases table each time: a
    million-case replay slowed as it grew. The statement must search the key's index."""
    from hub.store.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    engine = make_engine(url)
    with UnitOfWork(engine) as uow:
        cases = [a_case(n) for n in range(3)]
        for case in cases:
            uow.cases.add(case)
        uow.commit()
    with statements_sent(engine) as sent, UnitOfWork(engine) as uow:
        moved = uow.cases.advance_status_many(
            {c.hub_id: c.version for c in cases[:2]}, status="in_queue", at=T0
        )
        uow.commit()
    assert moved == {cases[0].hub_id, cases[1].hub_id}
    [(sql, params)] = [(q, p) for q, p in sent if q.lstrip().upper().startswith("UPDATE CASES")]
    with engine.connect() as conn:
        plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
    engine.dispose()
    assert any(step.startswith("SEARCH cases") for step in plan), plan
    assert not any(step.startswith("SCAN cases") for step in plan), plan


def test_queue_stats_count_open_rows_and_skip_the_done_history(engine) -> None:
    """`hub departments status` reads these: pending (due or not), dead, per department,
    and a department whose deliveries are all done is still listed, with zeros. (The
    departments come from a skip scan, the open rows from (department, state) seeks: over
    a million done rows, 270-470 ms to read them all, 3-9 ms to skip them.)"""
    cases = [a_case(n) for n in range(1, 5)]
    with UnitOfWork(engine) as uow:
        for case in cases:
            uow.cases.add(case)
        enqueue(uow, cases[0].hub_id)  # due at T0
        enqueue(uow, cases[1].hub_id, due=T0 + timedelta(hours=1))  # scheduled
        enqueue(uow, cases[2].hub_id)
        enqueue(uow, cases[3].hub_id, dept="sanitation")
        uow.commit()
    with UnitOfWork(engine) as uow:
        by_case = {
            i.case_id: i for i in uow.outbox.claim(worker="w", limit=10, lease=LEASE, now=T0)
        }
        assert uow.outbox.mark_dead(
            by_case[cases[2].hub_id].id, error_class="permanent", message="refused", worker="w"
        )
        assert uow.outbox.mark_done(by_case[cases[3].hub_id].id, worker="w")
        uow.commit()
    with UnitOfWork(engine) as uow:
        stats = uow.outbox.stats(now=T0 + timedelta(minutes=1))
    assert set(stats) == {"publicworks", "sanitation"}
    assert stats["sanitation"] == QueueStats("sanitation", 0, 0, 0, 0, None)  # all done
    works = stats["publicworks"]
    assert (works.pending, works.due, works.dead, works.held) == (2, 1, 1, 0)
