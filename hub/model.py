"""The canonical domain: Case, WorkOrder, StatusEvent, CaseEvent and the lifecycle rules.

Field names follow Open311 GeoReport v2 where one exists, so a case converts to an
Open311 service request without renaming. This module imports nothing else of the hub.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

HUB_ID_NAMESPACE = uuid.UUID("5b0c2f61-7f43-4c1e-9a59-311311311311")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Naive datetimes inside the hub are UTC; aware ones are converted."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_hub_id(
    source_system: str | None = None,
    source_id: str | None = None,
    requested_at: datetime | None = None,
) -> str:
    """The hub id: derived from the source request when there is one.

    With the request's time (intake always passes it) the id is laid out as a UUIDv7:
    48 bits of Unix milliseconds first, then 74 bits of the source's uuid5 (or random
    bits for a request with no source). Ids then sort by request time, so the rows of
    the cases being worked on sit together in every index keyed by case instead of
    scattering over all of them (decision 0019). The same request (same source, same
    time) submitted twice gets the same id; one sent again with another time is found
    by its source at intake. Without a time: the source's plain uuid5, or a random id.
    """
    if source_system and source_id:
        named = uuid.uuid5(HUB_ID_NAMESPACE, f"{source_system}\x1f{source_id}")
        return str(named) if requested_at is None else _time_ordered(requested_at, named.int)
    if requested_at is not None:
        return _time_ordered(requested_at, uuid.uuid4().int)
    return str(uuid.uuid4())


def _time_ordered(at: datetime, bits: int) -> str:
    """A UUIDv7 (RFC 9562) from a time and 74 bits of `bits`: sortable as text."""
    millis = int(as_utc(at).timestamp() * 1000) & (1 << 48) - 1
    value = millis << 80 | 0x7 << 76 | (bits >> 64 & 0xFFF) << 64 | 0b10 << 62
    return str(uuid.UUID(int=value | bits & (1 << 62) - 1))


# --------------------------------------------------------------------------- lifecycle


class CaseStatus(StrEnum):
    RECEIVED = "received"
    ROUTED = "routed"
    IN_QUEUE = "in_queue"
    ONSITE = "onsite"
    RESOLVED = "resolved"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    REOPENED = "reopened"

    @property
    def open311(self) -> str:
        """GeoReport v2 knows only `open` and `closed`."""
        return "closed" if self in FINISHED else "open"

    @property
    def is_final(self) -> bool:
        return self in FINISHED


FINISHED = frozenset(
    {CaseStatus.RESOLVED, CaseStatus.CLOSED, CaseStatus.CANCELLED, CaseStatus.REJECTED}
)

# Work progresses forward only; the one way back is the explicit reopen.
_FORWARD = {
    CaseStatus.RECEIVED: {CaseStatus.ROUTED, CaseStatus.CANCELLED, CaseStatus.REJECTED},
    CaseStatus.ROUTED: {
        CaseStatus.IN_QUEUE,
        CaseStatus.ONSITE,
        CaseStatus.RESOLVED,
        CaseStatus.CLOSED,
        CaseStatus.CANCELLED,
        CaseStatus.REJECTED,
    },
    CaseStatus.IN_QUEUE: {
        CaseStatus.ONSITE,
        CaseStatus.RESOLVED,
        CaseStatus.CLOSED,
        CaseStatus.CANCELLED,
        CaseStatus.REJECTED,
    },
    CaseStatus.ONSITE: {CaseStatus.RESOLVED, CaseStatus.CLOSED, CaseStatus.CANCELLED},
    CaseStatus.RESOLVED: {CaseStatus.CLOSED, CaseStatus.REOPENED},
    CaseStatus.CLOSED: {CaseStatus.REOPENED},
    CaseStatus.CANCELLED: {CaseStatus.REOPENED},
    CaseStatus.REJECTED: {CaseStatus.REOPENED, CaseStatus.ROUTED},
    CaseStatus.REOPENED: {
        CaseStatus.ROUTED,
        CaseStatus.IN_QUEUE,
        CaseStatus.ONSITE,
        CaseStatus.RESOLVED,
        CaseStatus.CLOSED,
        CaseStatus.CANCELLED,
        CaseStatus.REJECTED,
    },
}
ALLOWED_TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    status: frozenset(targets) for status, targets in _FORWARD.items()
}


class TransitionOutcome(StrEnum):
    APPLIED = "applied"
    NO_OP = "no_op"  # already there: duplicates are harmless
    REFUSED = "refused"  # would move the case backwards or skip the reopen


def check_transition(current: CaseStatus, target: CaseStatus) -> TransitionOutcome:
    if current == target:
        return TransitionOutcome.NO_OP
    if target in ALLOWED_TRANSITIONS[current]:
        return TransitionOutcome.APPLIED
    return TransitionOutcome.REFUSED


class InvalidTransition(ValueError):
    def __init__(self, current: CaseStatus, target: CaseStatus) -> None:
        super().__init__(f"a case in {current.value!r} cannot move to {target.value!r}")
        self.current, self.target = current, target


# --------------------------------------------------------------------------- value objects


class Attachment(BaseModel):
    """Evidence: a photo or document, referenced by URL and pinned by digest."""

    model_config = ConfigDict(frozen=True)

    url: str
    content_type: str = "application/octet-stream"
    size: int | None = Field(default=None, ge=0)
    digest: str | None = None  # "sha256:<hex>"
    filename: str | None = None

    @staticmethod
    def digest_of(content: bytes) -> str:
        return "sha256:" + hashlib.sha256(content).hexdigest()


class Requester(BaseModel):
    """Requester contact. PII: never logged, never in events; repr is redacted."""

    model_config = ConfigDict(frozen=True)

    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    device_id: str | None = None
    account_id: str | None = None

    def __repr__(self) -> str:
        return "Requester(<redacted>)"

    __str__ = __repr__


class Closure(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    text: str | None = None


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    EMERGENCY = "emergency"


# --------------------------------------------------------------------------- case


class Case(BaseModel):
    """A resident's request in the hub's canonical form (Open311 GeoReport v2 names)."""

    model_config = ConfigDict(validate_assignment=True)

    hub_id: str = Field(default_factory=lambda: new_hub_id(requested_at=utcnow()))
    source_system: str | None = None
    source_id: str | None = None

    service_code: str
    service_name: str | None = None
    description: str | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    long: float | None = Field(default=None, ge=-180, le=180)
    address_string: str | None = None
    address_id: str | None = None
    zipcode: str | None = None
    media_url: str | None = None
    requested_datetime: datetime = Field(default_factory=utcnow)
    updated_datetime: datetime = Field(default_factory=utcnow)

    attributes: dict[str, Any] = Field(default_factory=dict)
    evidence: list[Attachment] = Field(default_factory=list)
    requester: Requester | None = Field(default=None, repr=False)
    language: str = "en"
    priority: Priority = Priority.NORMAL

    department: str | None = None
    team: str | None = None
    work_order_type: str | None = None
    sla_due: datetime | None = None
    status: CaseStatus = CaseStatus.RECEIVED
    status_notes: str | None = None
    closure: Closure | None = None
    version: int = 1

    @field_validator("requested_datetime", "updated_datetime", "sla_due")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    @property
    def open311_status(self) -> str:
        return self.status.open311

    def transition(self, target: CaseStatus, *, at: datetime | None = None) -> TransitionOutcome:
        """Move to `target` if the lifecycle allows it; raise InvalidTransition otherwise."""
        outcome = check_transition(self.status, target)
        if outcome is TransitionOutcome.REFUSED:
            raise InvalidTransition(self.status, target)
        if outcome is TransitionOutcome.APPLIED:
            self.status = target
            self.updated_datetime = as_utc(at or utcnow())
            self.version += 1
            if target is CaseStatus.REOPENED:
                self.closure = None
        return outcome

    def redacted(self) -> dict[str, Any]:
        """A dump safe for logs and timeline events: no requester contact."""
        return self.model_dump(mode="json", exclude={"requester"})


# --------------------------------------------------------------------------- work orders


class DeliveryState(StrEnum):
    PENDING = "pending"  # outbox row waiting
    DELIVERED = "delivered"  # department acknowledged with an external id
    DEAD = "dead"  # dead-lettered: needs a human, replayable
    HELD = "held"  # held by a before-dispatch hook (payment, manual review)
    CANCELLED = "cancelled"


class WorkOrder(BaseModel):
    """One case as seen by one department."""

    case_id: str
    department: str
    work_order_type: str | None = None
    external_id: str | None = None
    raw_status: str | None = None
    raw_status_text: str | None = None
    mapped_status: CaseStatus | None = None
    delivery_state: DeliveryState = DeliveryState.PENDING
    last_sequence: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class StatusEvent(BaseModel):
    """A status change reported by a department (poll, push or file)."""

    department: str
    external_event_id: str
    external_id: str | None = None
    hub_reference: str | None = None
    raw_code: str
    raw_text: str | None = None
    occurred_at: datetime
    sequence: str | None = None  # department order: sortable string (zero-padded or ISO)
    closure_code: str | None = None
    closure_text: str | None = None
    evidence: list[Attachment] = Field(default_factory=list)

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)


class EventLevel(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ALERT = "alert"


class CaseEvent(BaseModel):
    """One line of a case's timeline. `detail` never holds requester PII or secrets."""

    case_id: str
    kind: str
    at: datetime = Field(default_factory=utcnow)
    level: EventLevel = EventLevel.INFO
    actor: str = "hub"
    source: str | None = None
    department: str | None = None
    message: str = ""
    detail: dict[str, Any] = Field(default_factory=dict)


class Route(BaseModel):
    """Where a case goes: the result of routing (mapping rules or a choose-route hook)."""

    model_config = ConfigDict(frozen=True)

    department: str
    work_order_type: str | None = None
    priority: Priority | None = None
    sla_hours: float | None = None
    team: str | None = None
    reason: str = "service catalogue"


class PeriodicJob(BaseModel):
    """A plugin's periodic job (``hub_periodic_jobs``): ``run(hub)`` is awaited every
    ``every_seconds`` by one worker process per slot (claimed in the database)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,60}$")
    every_seconds: float = Field(gt=0)
    run: Any  # async (hub) -> result; a result with as_dict() is recorded on the run


class DispatchDecision(BaseModel):
    """A before-dispatch hook's answer: proceed, or hold the case with a reason."""

    hold: bool = False
    reason: str = ""
    state: str = "held"  # e.g. "awaiting_payment"
    detail: dict[str, Any] = Field(default_factory=dict)
