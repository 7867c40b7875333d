"""The unit of work's transaction boundaries, on both stores."""

from __future__ import annotations

from sqlalchemy import func, select

from hub.store import tables as t
from hub.store.uow import UnitOfWork


def _count(engine) -> int:
    with engine.connect() as conn:
        ds = t.department_state
        query = select(func.count()).select_from(ds).where(ds.c.department.like("uow-test%"))
        return conn.execute(query).scalar_one()


def _put(uow: UnitOfWork, name: str) -> None:
    from hub.store.repository import DepartmentHealth

    uow.departments.put(DepartmentHealth(name))


def test_after_commit_no_transaction_is_held_and_the_next_write_is_its_own(engine) -> None:
    with UnitOfWork(engine) as uow:
        _put(uow, "uow-test-1")
        uow.commit()
        # Nothing open between commits: on SQLite no write lock is kept for the exit.
        assert not uow.connection.in_transaction()
        _put(uow, "uow-test-2")  # begins the next transaction
        assert uow.connection.in_transaction()
        uow.commit()
        _put(uow, "uow-test-3")  # never committed: rolled back at exit
    assert _count(engine) == 2


def test_rollback_discards_and_the_unit_of_work_goes_on(engine) -> None:
    with UnitOfWork(engine) as uow:
        _put(uow, "uow-test-a")
        uow.rollback()
        _put(uow, "uow-test-b")
        uow.commit()
        uow.rollback()  # nothing open: a no-op
    assert _count(engine) == 1
