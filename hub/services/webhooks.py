"""Status push: signed department notifications (``POST /webhooks/{department}``).

Signature header (the same scheme signs the hub's own CRM callbacks)::

    X-Hub-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

A missing or malformed header, a wrong MAC, or a ``t`` more than 300 s from our clock is
refused (HTTP 401) before the body is even parsed, so it changes nothing. Several ``v1=``
values may be sent during a secret rotation; any match is accepted. A replayed request
(same body, valid signature, inside the window) is harmless: its events are deduplicated
on (department, external event id) by the status sync.

Body: an adapter that declares ``status_push`` parses its own format with
``parse_push(body: bytes, content_type: str | None) -> list[DepartmentEvent]``. Otherwise
the hub's generic JSON shape is used (docs/status-sync.md)::

    {"events": [{"event_id": "e-1", "work_order_id": "100123", "hub_reference": "<hub id>",
                 "status": "Closed", "status_text": "Closed by crew",
                 "occurred_at": "2026-03-08T01:30:00", "sequence": "000042",
                 "closure_code": "completed", "closure_text": "Pothole filled",
                 "evidence": [{"url": "https://…/photo.jpg", "content_type": "image/jpeg"}]}]}

A single event object without the ``events`` wrapper is accepted too. A naive
``occurred_at`` is wall time in the department's mapping time zone (fall-back's repeated
hour: the first occurrence, ordered by status sync; spring-forward's skipped hour: the
offset before the change, so 02:30 is 03:30 daylight time). Events are applied in
sequence order (``sequence``, else ``occurred_at``); events of one sequence, as a clock in
whole seconds gives a crew's two steps, keep the order they are sent in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.adapters import Capability, DepartmentEvent
from hub.mapping.engine import local_to_utc
from hub.model import Attachment
from hub.services.runtime import Hub
from hub.services.sync import PUSH, StatusSync, SyncResult

SIGNATURE_HEADER = "X-Hub-Signature"
TOLERANCE_SECONDS = 300
MAX_BODY_BYTES = 1_000_000


class WebhookRejected(Exception):
    """Refused before anything changed. `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# --------------------------------------------------------------------------- signatures


def signature_header(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The header value for `body` signed now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_mac(secret, t, body)}"


def _mac(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    """Raise WebhookRejected(401) unless `header` signs `body` with `secret`, recently."""
    if not header:
        raise WebhookRejected(401, f"missing {SIGNATURE_HEADER} header")
    parts = [p.strip().partition("=") for p in header.split(",")]
    stamps = [v for k, _, v in parts if k == "t"]
    macs = [v for k, _, v in parts if k == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not macs:
        raise WebhookRejected(401, f"malformed {SIGNATURE_HEADER} header")
    t = int(stamps[0])
    if abs((time.time() if now is None else now) - t) > tolerance:
        raise WebhookRejected(401, f"signature timestamp outside the {tolerance} s window")
    expected = _mac(secret, t, body)
    # compare_digest on every candidate: no early exit that would leak which one matched.
    matched = [hmac.compare_digest(expected, candidate) for candidate in macs]
    if not any(matched):
        raise WebhookRejected(401, "signature does not match")


# --------------------------------------------------------------------------- body


@runtime_checkable
class PushParser(Protocol):
    def parse_push(self, body: bytes, content_type: str | None) -> list[DepartmentEvent]: ...


class GenericEvidence(BaseModel):
    url: str
    content_type: str = "application/octet-stream"
    filename: str | None = None


class GenericEvent(BaseModel):
    """The hub's generic push event (for departments without their own push format)."""

    model_config = ConfigDict(extra="ignore")

    event_id: str = Field(min_length=1, max_length=160)
    work_order_id: str | None = None
    hub_reference: str | None = None
    status: str = Field(min_length=1, max_length=64)
    status_text: str | None = None
    occurred_at: datetime
    sequence: str | None = Field(default=None, max_length=64)
    closure_code: str | None = None
    closure_text: str | None = None
    evidence: list[GenericEvidence] = Field(default_factory=list)

    def to_event(self, department: str, zone: ZoneInfo) -> DepartmentEvent:
        # A naive time is department wall time, read as every path reads it (the first
        # occurrence in a repeated hour, the pre-change offset in a skipped one); status
        # sync orders the repeated hour's times itself (docs/status-sync.md).
        occurred = local_to_utc(self.occurred_at, zone)
        return DepartmentEvent(
            department=department,
            external_event_id=self.event_id,
            external_id=self.work_order_id,
            hub_reference=self.hub_reference,
            raw_code=self.status,
            raw_text=self.status_text,
            occurred_at=occurred,
            sequence=self.sequence,
            closure_code=self.closure_code,
            closure_text=self.closure_text,
            evidence=[Attachment(**e.model_dump()) for e in self.evidence],
        )


def parse_generic(body: bytes, department: str, zone: ZoneInfo) -> list[DepartmentEvent]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise WebhookRejected(400, f"body is not JSON: {exc}") from None
    items = data.get("events") if isinstance(data, dict) and "events" in data else [data]
    if not isinstance(items, list):
        raise WebhookRejected(400, "`events` must be a list")
    try:
        return [GenericEvent.model_validate(i).to_event(department, zone) for i in items]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WebhookRejected(400, f"event {where}: {first['msg']}") from None


# --------------------------------------------------------------------------- service


@dataclass
class WebhookResult:
    department: str
    sync: SyncResult

    def as_dict(self) -> dict[str, Any]:
        return self.sync.as_dict()


class WebhookService:
    def __init__(self, hub: Hub, *, sync: StatusSync | None = None) -> None:
        self.hub = hub
        self.sync = sync or StatusSync(hub, actor="webhook")

    def secret(self, department: str) -> str:
        dept = self.hub.config.enabled_departments().get(department)
        if dept is None:
            raise WebhookRejected(404, f"no department {department!r}")
        try:
            secret = dept.webhook_secret_value()
        except ValueError as exc:  # the env var or file is gone: refuse, say why in logs
            raise WebhookRejected(401, f"webhook secret unavailable: {exc}") from None
        if not secret:  # secure by default: no secret, no webhooks
            raise WebhookRejected(401, f"webhooks are not enabled for {department}")
        return secret

    async def receive(
        self,
        department: str,
        body: bytes,
        signature: str | None,
        *,
        content_type: str | None = None,
    ) -> WebhookResult:
        if len(body) > MAX_BODY_BYTES:
            raise WebhookRejected(413, "body too large")
        verify_signature(self.secret(department), signature, body)
        events = self.parse(department, body, content_type)
        result = await self.sync.apply_async(department, events, source=PUSH)
        return WebhookResult(department, result)

    def parse(self, department: str, body: bytes, content_type: str | None) -> list:
        adapter = self.hub.adapter(department)
        if adapter.supports(Capability.STATUS_PUSH) and isinstance(adapter, PushParser):
            try:
                return adapter.parse_push(body, content_type)
            except ValueError as exc:
                raise WebhookRejected(400, f"unreadable notification: {exc}") from None
        return parse_generic(body, department, self.hub.mapping(department).local_timezone)


__all__ = [
    "SIGNATURE_HEADER",
    "TOLERANCE_SECONDS",
    "GenericEvent",
    "PushParser",
    "WebhookRejected",
    "WebhookResult",
    "WebhookService",
    "parse_generic",
    "signature_header",
    "verify_signature",
]
