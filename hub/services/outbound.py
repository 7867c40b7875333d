"""Status out: changes made on the 311 side reach the department through the outbox.

A resident adds a note or a photo, or 311 cancels or reopens the case. For every work
order of the case, the change is enqueued (after the create, by the outbox's per
(case, department) ordering) when the department's adapter declares the capability;
otherwise the case timeline says, visibly, that this department cannot receive it.

Idempotency keys are ``<case>:<department>:<operation>:<request key>``; the caller's
request key (an API request id, a photo digest) makes a retried call a no-op.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from hub.adapters import Adapter, Capability, CapabilityNotSupported, Permanent
from hub.model import (
    Attachment,
    Case,
    CaseEvent,
    CaseStatus,
    DeliveryState,
    EventLevel,
    TransitionOutcome,
    WorkOrder,
)
from hub.services.dispatch import register_operation
from hub.services.runtime import Hub
from hub.services.status import change_status
from hub.store.uow import UnitOfWork

log = logging.getLogger(__name__)

NOTE, ATTACH, CANCEL, REOPEN = "note", "attach", "cancel", "reopen"
# Reopen has no port capability: an adapter that can do it defines `reopen(external_id,
# status_code, reason)` (the code is the mapping's status_out for "reopened").
NEEDS = {NOTE: Capability.ADD_NOTE, ATTACH: Capability.ATTACH, CANCEL: Capability.CANCEL}


class CaseNotFound(LookupError):
    pass


@dataclass
class OutboundResult:
    case_id: str
    operation: str
    enqueued: list[str] = field(default_factory=list)  # departments
    already: list[str] = field(default_factory=list)  # same key seen before
    not_deliverable: list[str] = field(default_factory=list)
    status: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def can_deliver(adapter: Adapter, operation: str) -> bool:
    if operation == REOPEN:
        return callable(getattr(adapter, "reopen", None))
    return adapter.supports(NEEDS[operation])


class OutboundService:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def add_note(
        self,
        case_id: str,
        text: str,
        *,
        author: str = "311",
        public: bool = True,
        key: str | None = None,
        actor: str = "api",
    ) -> OutboundResult:
        payload = {"text": text, "author": author, "public": public}
        return self._send(case_id, NOTE, payload, key or _digest(text), actor=actor)

    def add_photo(
        self, case_id: str, photo: Attachment, *, key: str | None = None, actor: str = "api"
    ) -> OutboundResult:
        payload = photo.model_dump(mode="json")
        return self._send(
            case_id, ATTACH, payload, key or photo.digest or _digest(photo.url), actor=actor
        )

    def cancel(
        self,
        case_id: str,
        reason: str | None = None,
        *,
        key: str | None = None,
        actor: str = "api",
    ) -> OutboundResult:
        return self._send(
            case_id,
            CANCEL,
            {"reason": reason},
            key or "cancel",
            actor=actor,
            status=CaseStatus.CANCELLED,
        )

    def reopen(
        self,
        case_id: str,
        reason: str | None = None,
        *,
        key: str | None = None,
        actor: str = "api",
    ) -> OutboundResult:
        # Every reopen is a new event (a case can be reopened twice): default key is fresh.
        return self._send(
            case_id,
            REOPEN,
            {"reason": reason},
            key or uuid.uuid4().hex,
            actor=actor,
            status=CaseStatus.REOPENED,
        )

    # ----------------------------------------------------------------------- core

    def _send(
        self,
        case_id: str,
        operation: str,
        payload: dict[str, Any],
        key: str,
        *,
        actor: str,
        status: CaseStatus | None = None,
    ) -> OutboundResult:
        result = OutboundResult(case_id, operation)
        change = None
        with self.hub.uow() as uow:
            case = uow.cases.get(case_id)
            if case is None:
                raise CaseNotFound(f"no case {case_id}")
            if status is not None:
                change = change_status(uow, case, status, source="api", actor=actor)
                result.status = case.status.value
                if change.outcome is TransitionOutcome.REFUSED:
                    uow.commit()  # the refusal is on the timeline
                    return result
            for order in uow.work_orders.for_case(case_id):
                self._one(uow, case, order, operation, payload, key, actor, result)
            uow.commit()
        if change is not None and change.outcome is TransitionOutcome.APPLIED:
            self._notify(change.case, change.old, change.new)
        return result

    def _one(
        self,
        uow: UnitOfWork,
        case: Case,
        order: WorkOrder,
        operation: str,
        payload: dict[str, Any],
        key: str,
        actor: str,
        result: OutboundResult,
    ) -> None:
        dept = order.department
        if order.delivery_state in (DeliveryState.DEAD, DeliveryState.CANCELLED):
            reason = f"its work order is {order.delivery_state.value}"
        elif not self._deliverable(dept, operation):
            reason = f"{dept} cannot receive {operation} (adapter capability missing)"
        else:
            body = dict(payload)
            if operation == REOPEN:
                body["status_code"] = self.hub.mapping(dept).status_out(CaseStatus.REOPENED)
            if uow.outbox.enqueue(
                case_id=case.hub_id,
                department=dept,
                operation=operation,
                idempotency_key=f"{case.hub_id}:{dept}:{operation}:{key}",
                payload=body,
            ):
                result.enqueued.append(dept)
                uow.timeline.append(
                    self._event(
                        case, dept, "outbound_queued", actor, f"{operation} queued for {dept}"
                    )
                )
            else:
                result.already.append(dept)
            return
        result.not_deliverable.append(dept)
        uow.timeline.append(
            self._event(
                case,
                dept,
                "not_deliverable",
                actor,
                f"{operation} not delivered to {dept}: {reason}",
                EventLevel.WARNING,
            )
        )

    def _deliverable(self, department: str, operation: str) -> bool:
        try:
            return can_deliver(self.hub.adapter(department), operation)
        except Exception:  # not configured any more: not deliverable, said so on the case
            return False

    @staticmethod
    def _event(
        case: Case,
        dept: str,
        kind: str,
        actor: str,
        message: str,
        level: EventLevel = EventLevel.INFO,
    ) -> CaseEvent:
        return CaseEvent(
            case_id=case.hub_id,
            kind=kind,
            actor=actor,
            department=dept,
            level=level,
            message=message,
        )

    def _notify(self, case: Case, old: CaseStatus, new: CaseStatus) -> None:
        try:
            self.hub.pm.hook.hub_on_status_change(
                hub=self.hub, case=case, old=old, new=new, event=None
            )
        except Exception:
            log.exception("on_status_change hook failed for case %s", case.hub_id)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


async def _deliver_reopen(hub: Hub, item, case: Case, order: WorkOrder | None) -> str:
    """Outbox handler of `reopen` (the port has no such call; see NEEDS above)."""
    if order is None or not order.external_id:
        raise Permanent("reopen: the department has no work order for this case")
    adapter = hub.adapter(item.department)
    reopen = getattr(adapter, "reopen", None)
    if not callable(reopen):
        raise CapabilityNotSupported(f"{adapter.name} cannot reopen work orders")
    await reopen(order.external_id, item.payload.get("status_code"), item.payload.get("reason"))
    return "reopen delivered"


register_operation(REOPEN, _deliver_reopen)
