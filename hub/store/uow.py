"""Unit of work: one transaction, the repositories that work inside it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType

from sqlalchemy import Connection, Engine

from hub.store.repository import (
    CaseRepository,
    DepartmentStateRepository,
    InboundEventRepository,
    JobRunRepository,
    OutboxRepository,
    RejectedInputRepository,
    StatusUpdateRepository,
    SyncCursorRepository,
    TimelineRepository,
    WorkOrderRepository,
)


class UnitOfWork:
    """``with UnitOfWork(engine) as uow: ...; uow.commit()`` — no commit, no change."""

    cases: CaseRepository
    timeline: TimelineRepository
    work_orders: WorkOrderRepository
    outbox: OutboxRepository
    departments: DepartmentStateRepository
    job_runs: JobRunRepository
    cursors: SyncCursorRepository
    status_updates: StatusUpdateRepository
    inbound: InboundEventRepository
    rejected: RejectedInputRepository

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: Connection | None = None

    def __enter__(self) -> UnitOfWork:
        # No BEGIN here: the first statement begins the transaction (SQLAlchemy's
        # autobegin, through the begin event). On SQLite that BEGIN IMMEDIATE takes the one
        # write lock, so what a unit of work computes before its first statement (rows
        # built, JSON encoded, parameters bound) is done before the lock, not while other
        # writers queue for it.
        self.connection = self.engine.connect()
        conn = self.connection
        self.cases = CaseRepository(conn)
        self.timeline = TimelineRepository(conn)
        self.work_orders = WorkOrderRepository(conn)
        self.outbox = OutboxRepository(conn)
        self.departments = DepartmentStateRepository(conn)
        self.job_runs = JobRunRepository(conn)
        self.cursors = SyncCursorRepository(conn)
        self.status_updates = StatusUpdateRepository(conn)
        self.inbound = InboundEventRepository(conn)
        self.rejected = RejectedInputRepository(conn)
        return self

    # After commit or rollback the next statement likewise begins the next transaction.
    # Beginning it at once would take SQLite's write lock only to give it back at exit, for
    # every unit of work that ends with its commit, as most do.

    @contextlib.contextmanager
    def appends_held(self) -> Iterator[None]:
        """Timeline events and status updates added inside the block are written in one
        statement each when it ends (status sync's page); reads inside it do not see them."""
        with self.timeline.held(), self.status_updates.held():
            yield

    @contextlib.contextmanager
    def page_held(self) -> Iterator[None]:
        """appends_held, and case saves and work orders' department statuses held too, each
        written in one executemany when the block ends (status sync's page): inside SQLite's
        one write lock, and one round trip each on PostgreSQL, not one per event. Reads of
        cases inside the block see the held saves."""
        with self.appends_held(), self.cases.saves_held(), self.work_orders.status_held():
            yield

    def commit(self) -> None:
        transaction = self.connection.get_transaction()  # type: ignore[union-attr]
        if transaction is not None:
            transaction.commit()

    def rollback(self) -> None:
        transaction = self.connection.get_transaction()  # type: ignore[union-attr]
        if transaction is not None:
            transaction.rollback()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.rollback()  # whatever was not committed
        finally:
            self.connection.close()  # type: ignore[union-attr]
