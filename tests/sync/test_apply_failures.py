"""Status sync under database trouble: a lock conflict (a poll and a webhook locking the
same cases in another order) is retried whole, and a failed statement never carries its
bound values (the requester's name) into the logged error."""

from __future__ import annotations

import pytest
from psycopg import errors as pg_errors
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from hub.model import CaseStatus
from hub.services.sync import APPLIED, StatusSync
from tests.sync.conftest import sim
from tests.sync.test_status_in import delivered_cases

pytestmark = pytest.mark.timeout(120)


def deadlock() -> OperationalError:
    return OperationalError("UPDATE cases …", {}, pg_errors.DeadlockDetected("deadlock detected"))


async def test_a_deadlock_victim_is_applied_again_whole(city, monkeypatch) -> None:
    hub, _cases, orders = await delivered_cases(city, 2)
    sim(city).advance(2, close=True)
    events = await hub.adapter("publicworks").get_status([o.external_id for o in orders.values()])
    sync = StatusSync(hub)
    real, calls = sync._apply_one, []

    def second_event_deadlocks_once(uow, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first event's writes are in the rolled-back transaction
            raise deadlock()
        return real(uow, *args, **kwargs)

    monkeypatch.setattr(sync, "_apply_one", second_event_deadlocks_once)
    result = sync.apply("publicworks", events, source="poll")
    assert result.outcomes[APPLIED] == 2 and sum(result.outcomes.values()) == 2
    with hub.uow() as uow:
        assert {uow.cases.get(c).status for c in orders} == {CaseStatus.RESOLVED}
    await hub.aclose()


async def test_other_database_errors_are_not_retried(city, monkeypatch) -> None:
    hub, _cases, orders = await delivered_cases(city, 1)
    sim(city).advance(1, close=True)
    events = await hub.adapter("publicworks").get_status([o.external_id for o in orders.values()])
    sync = StatusSync(hub)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise OperationalError("UPDATE cases …", {}, pg_errors.UndefinedTable("no table"))

    monkeypatch.setattr(sync, "_apply_one", broken)
    with pytest.raises(DBAPIError):
        sync.apply("publicworks", events, source="poll")
    assert len(calls) == 1
    await hub.aclose()


def test_a_failed_statement_does_not_carry_its_values(engine) -> None:
    secret = "Gabriel Requester-Name"
    with pytest.raises(DBAPIError) as failure, engine.connect() as conn:
        conn.execute(text("INSERT INTO no_such_table (name) VALUES (:name)"), {"name": secret})
    assert secret not in str(failure.value)


async def test_a_case_changed_after_the_read_ahead_is_read_again(city, monkeypatch, caplog) -> None:
    # The cases a page names are read before the write transaction; one written in
    # between (here: a staff note) is read again inside it, not overwritten or retried.
    hub, _cases, orders = await delivered_cases(city, 2)
    sim(city).advance(2, close=True)
    events = await hub.adapter("publicworks").get_status([o.external_id for o in orders.values()])
    sync = StatusSync(hub)
    real = sync._read_ahead
    changed = next(iter(orders))

    def then_staff_edit_a_case(department, ordered):
        ahead = real(department, ordered)
        assert set(ahead[1]) == set(orders)  # both read ahead
        with hub.uow() as uow:
            case = uow.cases.get(changed)
            version, case.description = case.version, "edited by staff meanwhile"
            case.version += 1
            uow.cases.save(case, expected_version=version)
            uow.commit()
        return ahead

    monkeypatch.setattr(sync, "_read_ahead", then_staff_edit_a_case)
    caplog.set_level("INFO", logger="hub.services.sync")
    result = sync.apply("publicworks", events, source="poll")
    assert result.outcomes[APPLIED] == 2
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    with hub.uow() as uow:
        case = uow.cases.get(changed)
        assert case.status is CaseStatus.RESOLVED
        assert case.description == "edited by staff meanwhile"
    await hub.aclose()
