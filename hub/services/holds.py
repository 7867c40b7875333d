"""Holds, releases and plugin-driven case changes: the store side of the pipeline plugins.

Plugins (the GIS and payment gates, the CRM callback, anyone's) never open a unit of work:
the architecture keeps adapters off the store. What they need to write goes through this
service, which knows nothing about GIS or payments:

- :func:`enqueue_operation`: queue one outbox operation for a case (idempotent by key);
- :func:`update_case_attributes`: merge attributes into a case (and log what happened);
- :func:`cancel_undispatched`: a case that will never be served: skip its unsent deliveries;
- :func:`case_session`: several reads and writes that must be one transaction (record a
  payment and release the held create; write GIS facts and re-route an unsent create).
  The :class:`CaseSession` it yields is the only handle a plugin gets.

Releasing obeys every hold, not only the caller's: a held create is released only when no
``hub_before_dispatch`` implementation holds the case any more and the case is not final.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hub.model import Case, CaseEvent, DeliveryState, EventLevel, WorkOrder
from hub.store.repository import HoldRepository, OutboxItem, OutboxState, StaleCase

if TYPE_CHECKING:
    from hub.services.runtime import Hub
    from hub.store.uow import UnitOfWork

# Raised by a save when another writer changed the case first: re-read and decide again.
CaseChanged = StaleCase

# Ids per IN list of a batch read: well under SQLite's 32,766 and PostgreSQL's 65,535 bound
# parameters, so a sweep over any backlog stays a few statements and never fails on size.
BATCH_IDS = 5_000


def _batches(ids: Sequence[str]) -> Iterator[list[str]]:
    ids = list(ids)
    for start in range(0, len(ids), BATCH_IDS):
        yield ids[start : start + BATCH_IDS]


def still_held(hub: Hub, case: Case) -> bool:
    """True if any plugin's ``hub_before_dispatch`` would hold the case now."""
    decisions = hub.pm.hook.hub_before_dispatch(hub=hub, case=case, department=case.department)
    return any(d is not None and d.hold for d in decisions)


class CaseSession:
    """One transaction of case work on behalf of a plugin (see :func:`case_session`)."""

    def __init__(self, hub: Hub, uow: UnitOfWork) -> None:
        self.hub = hub
        self._uow = uow
        self._holds = HoldRepository(uow.connection)

    # ----------------------------------------------------------------- reading

    def case(self, case_id: str) -> Case | None:
        return self._uow.cases.get(case_id)

    def cases(self, case_ids: Sequence[str]) -> dict[str, Case]:
        found: dict[str, Case] = {}
        for batch in _batches(case_ids):
            found.update(self._uow.cases.get_many(batch))
        return found

    def deliveries(self, case_id: str) -> list[OutboxItem]:
        """The case's outbox rows, in id order."""
        return self._uow.outbox.for_case(case_id)

    def deliveries_for(self, case_ids: Sequence[str]) -> dict[str, list[OutboxItem]]:
        """Each case's outbox rows, in id order (an empty list for a case with none): one
        statement per :data:`BATCH_IDS` cases, for sweeps that would otherwise ask once
        per case."""
        found: dict[str, list[OutboxItem]] = {}
        for batch in _batches(case_ids):
            found.update(self._uow.outbox.for_cases(batch))
        return found

    def delivery(self, item_id: int) -> OutboxItem | None:
        return self._uow.outbox.get(item_id)

    def work_orders(self, case_id: str) -> list[WorkOrder]:
        return self._uow.work_orders.for_case(case_id)

    def work_orders_for(self, case_ids: Sequence[str]) -> dict[str, list[WorkOrder]]:
        """Each case's work orders (an empty list for a case with none): one statement per
        :data:`BATCH_IDS` cases, for sweeps that would otherwise ask once per case."""
        found: dict[str, list[WorkOrder]] = {case_id: [] for case_id in case_ids}
        for batch in _batches(list(found)):
            for (case_id, _department), order in self._uow.work_orders.for_cases(batch).items():
                found[case_id].append(order)
        return found

    def held_case_ids(self) -> list[str]:
        """Cases with a delivery held back (state ``held``)."""
        return self._holds.held_case_ids()

    def case_ids_for_services(self, service_codes: Sequence[str]) -> list[str]:
        return self._holds.case_ids_for_services(service_codes)

    # ----------------------------------------------------------------- writing

    def save_case(self, case: Case, *, expected_version: int) -> None:
        """Store the case as changed in memory; raises :data:`CaseChanged` if stale."""
        self._uow.cases.save(case, expected_version=expected_version)

    def update_attributes(self, case: Case, updates: dict[str, Any]) -> None:
        """Merge `updates` into the case's attributes and store it (version + 1)."""
        version = case.version
        case.attributes = {**case.attributes, **updates}
        case.version += 1
        self._uow.cases.save(case, expected_version=version)

    def log(self, *events: CaseEvent) -> None:
        """Append to the case timeline."""
        self._uow.timeline.append(*events)

    def enqueue(
        self,
        case_id: str,
        department: str,
        operation: str,
        *,
        key: str,
        payload: dict[str, Any] | None = None,
        due: datetime | None = None,
        state: str = OutboxState.PENDING,
    ) -> bool:
        """Queue one operation; False if one with the same key was queued before."""
        return self._uow.outbox.enqueue(
            case_id=case_id,
            department=department,
            operation=operation,
            idempotency_key=key,
            payload=payload,
            due=due,
            state=state,
        )

    def skip_delivery(self, item_id: int, *, reason: str) -> bool:
        return self._uow.outbox.mark_skipped(item_id, reason=reason)

    def update_work_order(self, case_id: str, department: str, **values: Any) -> None:
        self._uow.work_orders.update(case_id, department, **values)

    def claim_if_idle(self, item: OutboxItem) -> bool:
        """Guarded touch of a delivery: true if no worker holds its lease now. Until this
        session commits no worker can claim it, so what is read about it stays true."""
        return self._holds.touch_if_idle(item.id)

    def move_unsent_create(
        self, case: Case, create: OutboxItem, department: str, reason: str
    ) -> None:
        """Re-address a never-attempted create: skip it, move the work order to
        `department` and queue a new create there in the same state."""
        from hub.services.intake import create_key

        self._uow.outbox.mark_skipped(create.id, reason=reason)
        self._uow.work_orders.update(case.hub_id, case.department, department=department)
        self._uow.outbox.enqueue(
            case_id=case.hub_id,
            department=department,
            operation="create",
            idempotency_key=create_key(case.hub_id, department),
            state=create.state,
        )

    def release_if_unheld(self, case: Case, *, actor: str, message: str) -> int:
        """Release the case's held deliveries if nothing holds it any more (every plugin's
        ``hub_before_dispatch`` lets it go) and it is not final. Returns the rows released;
        a release is written on the timeline with `actor` and `message`."""
        if case.status.is_final or still_held(self.hub, case):
            return 0
        released = self._uow.outbox.release_held(case.hub_id)
        for order in self._uow.work_orders.for_case(case.hub_id):
            if order.delivery_state == DeliveryState.HELD:
                self._uow.work_orders.update(
                    case.hub_id, order.department, delivery_state=DeliveryState.PENDING
                )
        if released:
            self._uow.timeline.append(
                CaseEvent(
                    case_id=case.hub_id,
                    kind="released",
                    actor=actor,
                    level=EventLevel.INFO,
                    department=case.department,
                    message=message,
                    detail={},
                )
            )
        return released

    def commit(self) -> None:
        self._uow.commit()


@contextmanager
def case_session(hub: Hub) -> Iterator[CaseSession]:
    """A transaction for several case reads and writes; nothing is kept without
    :meth:`CaseSession.commit`."""
    with hub.uow() as uow:
        yield CaseSession(hub, uow)


def enqueue_operation(
    hub: Hub,
    case_id: str,
    department: str,
    operation: str,
    *,
    key: str,
    payload: dict[str, Any] | None = None,
    due: datetime | None = None,
) -> bool:
    """Queue one outbox operation for a case, in its own transaction. False if an
    operation with the same key was queued before (so repeating a call is harmless)."""
    with case_session(hub) as session:
        queued = session.enqueue(case_id, department, operation, key=key, payload=payload, due=due)
        session.commit()
    return queued


def update_case_attributes(
    hub: Hub,
    case_id: str,
    updates: dict[str, Any],
    *,
    event: Callable[[Case], CaseEvent] | None = None,
) -> Case | None:
    """Merge `updates` into a case's attributes and, if `event` is given, append the event
    it builds from the updated case, in one transaction. None if there is no such case."""
    with case_session(hub) as session:
        case = session.case(case_id)
        if case is None:
            return None
        session.update_attributes(case, updates)
        if event is not None:
            session.log(event(case))
        session.commit()
    return case


def cancel_undispatched(hub: Hub, case_id: str, *, reason: str) -> None:
    """A case that will never be served: its held or pending deliveries to departments that
    never got the work order are skipped and those work orders marked cancelled."""
    with case_session(hub) as session:
        unsent = {
            o.department
            for o in session.work_orders(case_id)
            if o.external_id is None and o.delivery_state != DeliveryState.DELIVERED
        }
        for item in session.deliveries(case_id):
            if item.department in unsent and item.state in (
                OutboxState.HELD,
                OutboxState.PENDING,
            ):
                session.skip_delivery(item.id, reason=reason)
        for department in unsent:
            session.update_work_order(case_id, department, delivery_state=DeliveryState.CANCELLED)
        session.commit()
