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
from hub.services.status import StatusDetails, status_event, status_update_row
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


@dataclass
class _Accepted:
    result: IntakeResult
    token: str | None
    status_row: dict[str, Any] | None


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
        """Accept a batch in one transaction (one fsync for the lot), written set-wise: one
        statement per table for the whole batch, not one per case."""
        tokens = tokens or [None] * len(cases)
        for case in cases:
            if case.source_system and case.source_id:
                case.hub_id = new_hub_id(
                    case.source_system, case.source_id, case.requested_datetime
                )
        # Prepared before the first statement, so before SQLite's write lock: enrichment and
        # routing are most of intake's CPU. A case found stored below was prepared for
        # nothing (a resubmission: rare) and is answered with the stored copy.
        accepted: dict[str, _Accepted] = {}
        for case, token in zip(cases, tokens, strict=True):
            if case.hub_id not in accepted:
                accepted[case.hub_id] = self._prepare(case, actor=actor, token=token)
        with self.hub.uow() as uow:
            existing = uow.cases.get_many(list(accepted))
            accepted = {h: a for h, a in accepted.items() if h not in existing}
            inserted = uow.cases.add_many([(a.result.case, a.token) for a in accepted.values()])
            fresh = [a for hub_id, a in accepted.items() if hub_id in inserted]
            self._write(uow, fresh, actor)
            lost_race = [h for h in accepted if h not in inserted]
            existing |= uow.cases.get_many(lost_race)  # a concurrent intake won the race
            existing |= self._stored_by_source(
                uow, [a for h, a in accepted.items() if h in lost_race and h not in existing]
            )
            uow.commit()
        results: list[IntakeResult] = []
        first: set[str] = set()  # the same request twice in one batch: created once
        for case in cases:
            new = case.hub_id in inserted and case.hub_id not in first
            if new:
                first.add(case.hub_id)
                results.append(accepted[case.hub_id].result)
                continue
            stored = existing.get(case.hub_id) or accepted[case.hub_id].result.case
            results.append(IntakeResult(stored, created=False))
        for result in results:
            if result.created and result.route:
                self._notify(result.case, CaseStatus.RECEIVED, result.case.status)
        return results

    # ----------------------------------------------------------------------- steps

    @staticmethod
    def _stored_by_source(uow: UnitOfWork, refused: list[_Accepted]) -> dict[str, Case]:
        """Cases that were not inserted and are stored under another hub id: the same
        source request sent again with another requested time (the id leads with it).
        Keyed by the id this submission computed. Rare: a lookup each."""
        found: dict[str, Case] = {}
        for accepted in refused:
            case = accepted.result.case
            if case.source_system and case.source_id:
                stored = uow.cases.get_by_source(case.source_system, case.source_id)
                if stored is not None:
                    found[case.hub_id] = stored
        return found

    def _prepare(self, case: Case, *, actor: str, token: str | None) -> _Accepted:
        """Enrich, route and gate one case in memory; nothing is written yet."""
        events = [
            self._event(case, "received", actor, f"case received for {case.service_code}"),
            *self._enrich(case),
        ]
        route = self._route(case)
        held: DispatchDecision | None = None
        if route is None:
            message = "no route for this service code"
            events.append(self._event(case, "unroutable", actor, message, level=EventLevel.WARNING))
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
            if held:
                events.append(
                    self._event(
                        case,
                        held.state,
                        actor,
                        held.reason,
                        department=route.department,
                        detail=held.detail,
                    )
                )
            # Routed before the insert: the row is written once, already routed.
            details = StatusDetails(source="hub", actor=actor, department=route.department)
            old = case.status
            case.transition(CaseStatus.ROUTED)
            events.append(status_event(case, old, case.status, details))
            status_row = status_update_row(case, old, case.status, details)
        result = IntakeResult(case, created=True, route=route, held=held, events=events)
        return _Accepted(result, token, status_row if route else None)

    def _write(self, uow: UnitOfWork, fresh: list[_Accepted], actor: str) -> None:
        routed = [a for a in fresh if a.result.route is not None]
        uow.timeline.append(*(e for a in fresh for e in a.result.events))
        uow.status_updates.add_many([a.status_row for a in routed if a.status_row])
        uow.work_orders.add_many(
            [
                WorkOrder(
                    case_id=a.result.case.hub_id,
                    department=a.result.route.department,
                    work_order_type=a.result.route.work_order_type,
                    delivery_state=DeliveryState.HELD if a.result.held else DeliveryState.PENDING,
                )
                for a in routed
            ]
        )
        uow.outbox.enqueue_many(
            [
                {
                    "case_id": a.result.case.hub_id,
                    "department": a.result.route.department,
                    "operation": CREATE,
                    "idempotency_key": create_key(a.result.case.hub_id, a.result.route.department),
                    "state": OutboxState.HELD if a.result.held else OutboxState.PENDING,
                }
                for a in routed
            ]
        )

    def _enrich(self, case: Case) -> list[CaseEvent]:
        context: dict[str, Any] = {"flags": []}
        events = []
        for changes in self.hub.pm.hook.hub_enrich_case(hub=self.hub, case=case, context=context):
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
        return self.hub.pm.hook.hub_choose_route(hub=self.hub, case=case, default=default)

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
        decisions = self.hub.pm.hook.hub_before_dispatch(
            hub=self.hub, case=case, department=department
        )
        return next((d for d in decisions if d is not None and d.hold), None)

    def _notify(self, case: Case, old: CaseStatus, new: CaseStatus) -> None:
        try:
            self.hub.pm.hook.hub_on_status_change(
                hub=self.hub, case=case, old=old, new=new, event=None
            )
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
