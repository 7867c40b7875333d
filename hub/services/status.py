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
    change.update_id = uow.status_updates.add(
        case_id=case.hub_id,
        at=case.updated_datetime,
        old_status=old.value,
        status=new.value,
        department=department,
        raw_code=raw_code,
        description=description,
        media_url=media_url,
        closure_code=closure.code if closure else None,
        source=source,
    )
    uow.timeline.append(
        CaseEvent(
            case_id=case.hub_id,
            kind="status_changed",
            actor=actor,
            source=source,
            department=department,
            at=case.updated_datetime,
            message=f"{old.value} → {new.value}" + (f" ({raw_code})" if raw_code else ""),
            detail={
                "from": old.value,
                "to": new.value,
                "raw_code": raw_code,
                "closure": closure.model_dump() if closure else None,
                "media_url": media_url,
            },
        )
    )
    return change
