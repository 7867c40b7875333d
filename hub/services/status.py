"""Applying a canonical status change: the one place a case's status moves.

Intake, delivery, status sync, the API and reconciliation all come through here, so every
change is checked against the lifecycle, stored with optimistic concurrency, recorded on
the timeline and in the status-update feed (Open311 servicerequestupdates), and handed to
the on-status-change hook after commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from hub.model import (
    Case,
    CaseEvent,
    CaseStatus,
    Closure,
    EventLevel,
    StatusEvent,
    TransitionOutcome,
    check_transition,
    utcnow,
)
from hub.store.uow import UnitOfWork


@dataclass
class StatusChange:
    case: Case
    old: CaseStatus
    new: CaseStatus
    outcome: TransitionOutcome
    event: StatusEvent | None = None
    update_id: int | None = None
    notes: list[str] = field(default_factory=list)


def change_status(
    uow: UnitOfWork,
    case: Case,
    new: CaseStatus,
    *,
    source: str,
    actor: str = "hub",
    department: str | None = None,
    at: datetime | None = None,
    raw_code: str | None = None,
    description: str | None = None,
    media_url: str | None = None,
    closure: Closure | None = None,
    event: StatusEvent | None = None,
) -> StatusChange:
    """Move `case` to `new` if the lifecycle allows; a refused move is recorded, not raised.

    The caller commits. Raises StaleCase when the case changed since it was read.
    """
    old = case.status
    outcome = check_transition(old, new)
    change = StatusChange(case, old, new, outcome, event)
    if outcome is TransitionOutcome.NO_OP:
        return change
    if outcome is TransitionOutcome.REFUSED:
        uow.timeline.append(
            CaseEvent(
                case_id=case.hub_id,
                kind="status_refused",
                actor=actor,
                source=source,
                department=department,
                level=EventLevel.WARNING,
                message=f"{old.value} → {new.value} refused: a case never moves backwards",
                detail={"raw_code": raw_code, "from": old.value, "to": new.value},
            )
        )
        return change
    version = case.version
    case.transition(new, at=at)
    if closure is not None and new.is_final:
        case.closure = closure
    if description:
        case.status_notes = description
    uow.cases.save(case, expected_version=version)
    details = StatusDetails(source, actor, department, raw_code, description, media_url, closure)
    change.update_id = uow.status_updates.add(**status_update_row(case, old, new, details))
    uow.timeline.append(status_event(case, old, new, details))
    return change


def advance_many(
    uow: UnitOfWork,
    cases: list[tuple[Case, str | None, str | None]],
    new: CaseStatus,
    *,
    source: str,
    actor: str = "hub",
) -> list[StatusChange]:
    """The bulk form of change_status for a plain step forward (no closure or notes):
    `cases` holds (case, department, raw code). One statement moves every case still at the
    version it was read at; the others moved on meanwhile and keep their newer status."""
    movable = [c for c in cases if check_transition(c[0].status, new) is TransitionOutcome.APPLIED]
    moved = uow.cases.advance_status_many(
        {case.hub_id: case.version for case, _, _ in movable},
        status=new.value,
        at=(now := utcnow()),
    )
    changes, rows, events = [], [], []
    for case, department, raw_code in movable:
        if case.hub_id not in moved:
            continue
        old = case.status
        case.transition(new, at=now)
        details = StatusDetails(source, actor, department, raw_code, None, None, None)
        rows.append(status_update_row(case, old, new, details))
        events.append(status_event(case, old, new, details))
        changes.append(StatusChange(case, old, new, TransitionOutcome.APPLIED))
    uow.status_updates.add_many(rows)
    uow.timeline.append(*events)
    return changes


@dataclass(frozen=True)
class StatusDetails:
    """Who moved a case and with what: the parts of a status change beyond old and new."""

    source: str
    actor: str = "hub"
    department: str | None = None
    raw_code: str | None = None
    description: str | None = None
    media_url: str | None = None
    closure: Closure | None = None


def status_update_row(case: Case, old: CaseStatus, new: CaseStatus, d: StatusDetails) -> dict:
    return {
        "case_id": case.hub_id,
        "at": case.updated_datetime,
        "old_status": old.value,
        "status": new.value,
        "department": d.department,
        "raw_code": d.raw_code,
        "description": d.description,
        "media_url": d.media_url,
        "closure_code": d.closure.code if d.closure else None,
        "source": d.source,
    }


def status_event(case: Case, old: CaseStatus, new: CaseStatus, d: StatusDetails) -> CaseEvent:
    return CaseEvent(
        case_id=case.hub_id,
        kind="status_changed",
        actor=d.actor,
        source=d.source,
        department=d.department,
        at=case.updated_datetime,
        message=f"{old.value} → {new.value}" + (f" ({d.raw_code})" if d.raw_code else ""),
        detail={
            "from": old.value,
            "to": new.value,
            "raw_code": d.raw_code,
            "closure": d.closure.model_dump() if d.closure else None,
            "media_url": d.media_url,
        },
    )
