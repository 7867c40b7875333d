"""Intake: a case becomes durable together with its first delivery, in one transaction.

Idempotent by construction: the hub id derives from (source system, source id), the
case insert ignores a row that is already there, and outbox rows carry a unique key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hub.model import (
    Case,
    CaseEvent,
    CaseStatus,
    DeliveryState,
    DispatchDecision,
    EventLevel,
    Route,
    WorkOrder,
    new_hub_id,
)
from hub.services.runtime import Hub
from hub.services.status import change_status
from hub.store.repository import OutboxState
from hub.store.uow import UnitOfWork

log = logging.getLogger(__name__)

CREATE = "create"


@dataclass
class IntakeResult:
    case: Case
    created: bool
    route: Route | None = None
    held: DispatchDecision | None = None
    events: list[CaseEvent] = field(default_factory=list)


def create_key(hub_id: str, department: str) -> str:
    return f"{hub_id}:{department}:{CREATE}"


class IntakeService:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def submit(self, case: Case, *, actor: str = "api", token: str | None = None) -> IntakeResult:
        return self.submit_many([case], actor=actor, tokens=[token])[0]

    def submit_many(
        self, cases: list[Case], *, actor: str = "api", tokens: list[str | None] | None = None
    ) -> list[IntakeResult]:
        """Accept a batch in one transaction (one fsync for the lot)."""
        tokens = tokens or [None] * len(cases)
        results: list[IntakeResult] = []
        with self.hub.uow() as uow:
            for case, token in zip(cases, tokens, strict=True):
                results.append(self._accept(uow, case, actor=actor, token=token))
            uow.commit()
        for result in results:
            if result.created and result.route:
                self._notify(result.case, CaseStatus.RECEIVED, result.case.status)
        return results

    # ----------------------------------------------------------------------- steps

    def _accept(self, uow: UnitOfWork, case: Case, *, actor: str, token: str | None):
        if case.source_system and case.source_id:
            case.hub_id = new_hub_id(case.source_system, case.source_id)
            existing = uow.cases.get(case.hub_id)
            if existing is not None:
                return IntakeResult(existing, created=False)
        received = self._event(case, "received", actor, f"case received for {case.service_code}")
        events = [received, *self._enrich(case)]
        route = self._route(case)
        held: DispatchDecision | None = None
        if route is None:
            events.append(
                self._event(
                    case,
                    "unroutable",
                    actor,
                    "no route for this service code",
                    level=EventLevel.WARNING,
                )
            )
        else:
            self._apply_route(case, route)
            events.append(
                self._event(
                    case,
                    "routed",
                    actor,
                    f"routed to {route.department}: {route.reason}",
                    department=route.department,
                    detail={"work_order_type": route.work_order_type, "team": route.team},
                )
            )
            held = self._before_dispatch(case, route.department)
        if not uow.cases.add(case, token=token):  # a concurrent intake won the race
            return IntakeResult(uow.cases.get(case.hub_id) or case, created=False)
        uow.timeline.append(*events)
        if route is not None:
            change_status(
                uow,
                case,
                CaseStatus.ROUTED,
                source="hub",
                actor=actor,
                department=route.department,
            )
            self._enqueue(uow, case, route, held, actor)
        return IntakeResult(case, created=True, route=route, held=held, events=events)

    def _enrich(self, case: Case) -> list[CaseEvent]:
        context: dict[str, Any] = {"flags": []}
        events = []
        for changes in self.hub.pm.hook.hub_enrich_case(case=case, context=context):
            if not changes:
                continue
            attributes = changes.pop("attributes", None)
            for name, value in changes.items():
                setattr(case, name, value)
            if attributes:
                case.attributes = {**case.attributes, **attributes}
            fields = sorted([*changes, *(f"attributes.{a}" for a in attributes or {})])
            events.append(
                self._event(case, "enriched", "hub", "case enriched", detail={"fields": fields})
            )
        for flag in context["flags"]:
            events.append(self._event(case, "flag", "hub", flag, level=EventLevel.WARNING))
        return events

    def _route(self, case: Case) -> Route | None:
        default = self.hub.mappings.route(case)
        return self.hub.pm.hook.hub_choose_route(case=case, default=default)

    @staticmethod
    def _apply_route(case: Case, route: Route) -> None:
        case.department = route.department
        case.work_order_type = route.work_order_type
        case.team = route.team
        if route.priority is not None:
            case.priority = route.priority
        if route.sla_hours is not None:
            case.sla_due = case.requested_datetime + timedelta(hours=route.sla_hours)

    def _before_dispatch(self, case: Case, department: str) -> DispatchDecision | None:
        decisions = self.hub.pm.hook.hub_before_dispatch(case=case, department=department)
        return next((d for d in decisions if d is not None and d.hold), None)

    def _enqueue(self, uow, case, route, held, actor) -> None:
        state = DeliveryState.HELD if held else DeliveryState.PENDING
        uow.work_orders.add(
            WorkOrder(
                case_id=case.hub_id,
                department=route.department,
                work_order_type=route.work_order_type,
                delivery_state=state,
            )
        )
        uow.outbox.enqueue(
            case_id=case.hub_id,
            department=route.department,
            operation=CREATE,
            idempotency_key=create_key(case.hub_id, route.department),
            state=OutboxState.HELD if held else OutboxState.PENDING,
        )
        if held:
            uow.timeline.append(
                self._event(
                    case,
                    held.state,
                    actor,
                    held.reason,
                    department=route.department,
                    detail=held.detail,
                )
            )

    def _notify(self, case: Case, old: CaseStatus, new: CaseStatus) -> None:
        try:
            self.hub.pm.hook.hub_on_status_change(case=case, old=old, new=new, event=None)
        except Exception:  # a broken listener must not fail an accepted case
            log.exception("on_status_change hook failed for case %s", case.hub_id)

    @staticmethod
    def _event(
        case: Case,
        kind: str,
        actor: str,
        message: str,
        *,
        level: EventLevel = EventLevel.INFO,
        department: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> CaseEvent:
        return CaseEvent(
            case_id=case.hub_id,
            kind=kind,
            actor=actor,
            level=level,
            message=message,
            department=department,
            detail=detail or {},
            source=case.source_system,
        )
