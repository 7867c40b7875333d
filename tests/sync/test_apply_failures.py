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
from tests.statements import statements
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


async def test_a_page_writes_its_cases_and_work_orders_in_one_statement_each(city) -> None:
    hub, _cases, orders = await delivered_cases(city, 3)
    adapter, ids = hub.adapter("publicworks"), [o.external_id for o in orders.values()]
    sim(city).advance(3)  # one step each, then the closures: two events per work order
    steps = await adapter.get_status(ids)
    sim(city).advance(3, close=True)
    closures = await adapter.get_status(ids)
    with statements(hub.engine) as sent:
        result = StatusSync(hub).apply("publicworks", steps + closures, source="poll")
    assert result.received == 6 and result.outcomes[APPLIED] >= 3
    assert not result.outcomes["duplicate"] and not result.outcomes["stale"]
    updates = [s.split(" SET ")[0] for s in sent if s.lstrip().upper().startswith("UPDATE")]
    assert updates.count('UPDATE "cases"') + updates.count("UPDATE cases") == 1
    assert updates.count('UPDATE "work_orders"') + updates.count("UPDATE work_orders") == 1
    with hub.uow() as uow:
        assert {uow.cases.get(c).status for c in orders} == {CaseStatus.RESOLVED}
        assert {uow.work_orders.get(c, "publicworks").raw_status for c in orders} == {"Closed"}
    await hub.aclose()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite: one writer at a time
async def test_a_case_written_by_another_session_during_the_page_is_applied_again(
    city, monkeypatch, caplog
) -> None:
    # The page's case saves are held to its end; one that another session moved on in
    # the meantime fails its version guard there, and the whole page is applied again.
    hub, _cases, orders = await delivered_cases(city, 2)
    sim(city).advance(2, close=True)
    events = await hub.adapter("publicworks").get_status([o.external_id for o in orders.values()])
    sync = StatusSync(hub)
    real, calls, changed = sync._apply_one, [], next(iter(orders))

    def staff_edit_during_the_first_page(uow, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            with hub.uow() as other:
                case = other.cases.get(changed)
                version, case.description = case.version, "edited by staff meanwhile"
                case.version += 1
                other.cases.save(case, expected_version=version)
                other.commit()
        return real(uow, *args, **kwargs)

    monkeypatch.setattr(sync, "_apply_one", staff_edit_during_the_first_page)
    caplog.set_level("INFO", logger="hub.services.sync")
    result = sync.apply("publicworks", events, source="poll")
    assert result.outcomes[APPLIED] == 2 and len(calls) == 4  # two events, twice
    assert [r for r in caplog.records if "case changed under status sync" in r.getMessage()]
    with hub.uow() as uow:
        case = uow.cases.get(changed)
        assert case.status is CaseStatus.RESOLVED
        assert case.description == "edited by staff meanwhile"
    await hub.aclose()
