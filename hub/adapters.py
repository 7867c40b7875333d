"""The adapter port: what every department adapter implements.

An adapter speaks one department's language and says what its errors mean. Everything
durable (outbox, retries, leases, ordering, timeline) belongs to the hub, so adapters
never touch the store. See docs/adding-an-adapter.md for a walk-through.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, SerializeAsAny, model_validator

from hub.model import Attachment, StatusEvent


class Capability(StrEnum):
    CREATE = "create"
    FIND_BY_REFERENCE = "find_by_reference"
    CANCEL = "cancel"
    ADD_NOTE = "add_note"
    ATTACH = "attach"
    STATUS_POLL = "status_poll"
    STATUS_PUSH = "status_push"
    FILE_EXCHANGE = "file_exchange"
    ENRICH = "enrich"
    PAYMENT = "payment"


# --------------------------------------------------------------------------- errors


class DeliveryError(Exception):
    """Base of the classified errors an adapter raises. The message must hold no PII.

    `not_applied` is the adapter's word that the department refused the request before
    doing anything with it (a 429 from its rate limiter, a refused login, a connection
    that never opened). After such an error alone, a create is retried without the
    lookup-by-reference first; every other error leaves the engine unsure, and it looks up.
    """

    error_class: ClassVar[str] = "error"
    not_applied: bool = False

    def __init__(
        self, message: str, *, status_code: int | None = None, not_applied: bool | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        if not_applied is not None:
            self.not_applied = not_applied


class Transient(DeliveryError):
    """Try again later; `retry_after` (seconds) is the department's own wish, if it said.
    An HTTP 429 (`status_code=429`) counts as `not_applied` unless the adapter says not."""

    error_class = "transient"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
        not_applied: bool | None = None,
    ) -> None:
        if not_applied is None:
            not_applied = status_code == 429  # RFC 6585: refused by rate, not processed
        super().__init__(message, status_code=status_code, not_applied=not_applied)
        self.retry_after = retry_after


class Permanent(DeliveryError):
    """Retrying cannot help (validation error, unknown record): dead letter at once."""

    error_class = "permanent"


class CapabilityNotSupported(Permanent):
    """The adapter does not declare the capability the operation needs."""

    error_class = "not_supported"


class AuthFailed(DeliveryError):
    """Credentials are wrong or revoked: pause the department and alert a human."""

    error_class = "auth_failed"
    not_applied = True  # an unauthenticated request is refused before it is processed


class UnknownOutcome(DeliveryError):
    """The request left and no answer came back: it may have been applied.

    The engine looks the work order up by reference before it tries again.
    """

    error_class = "unknown_outcome"


class MalformedResponse(Transient):
    """The department answered with something we cannot read (HTML error page, bad JSON).

    Transient because such answers are usually a proxy or a restart; after max attempts
    it dead-letters like any transient error. For creates the engine treats it as an
    unknown outcome, since the department may have committed before the garbage came back.
    """

    error_class = "malformed"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: accepts delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# --------------------------------------------------------------------------- config


class SecretSourceError(ValueError):
    pass


def resolve_secret_reference(value: Any, *, field: str) -> Any:
    """`{"env": "NAME"}` → os.environ[NAME]; `{"file": "/path"}` → file text, stripped."""
    if not isinstance(value, Mapping) or not ({"env", "file"} & set(value)):
        return value
    if "env" in value:
        name = value["env"]
        if name not in os.environ:
            raise SecretSourceError(f"{field}: environment variable {name} is not set")
        return os.environ[name]
    path = Path(str(value["file"])).expanduser()
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretSourceError(f"{field}: cannot read secret file {path}: {exc.strerror}") from exc


class AdapterConfig(BaseModel):
    """Base of every adapter's config model.

    Any field may be given as `{env: NAME}` or `{file: PATH}`. Fields typed `SecretStr`
    *must* be: a literal secret in a config file is refused, so secrets live only in the
    environment or in files (mounted secrets), never in mappings or the config itself.
    """

    # hide_input_in_errors: a refused literal secret must not be echoed in the error text.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    timeout_seconds: float = Field(default=10.0, gt=0, description="per-request timeout")
    timezone: str = Field(default="UTC", description="zone of the department's naive timestamps")

    @model_validator(mode="before")
    @classmethod
    def _resolve_references(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        resolved = dict(data)
        for name, info in cls.model_fields.items():
            if name not in resolved:
                continue
            raw = resolved[name]
            is_reference = isinstance(raw, Mapping) and bool({"env", "file"} & set(raw))
            if info.annotation in (SecretStr, SecretStr | None) and not is_reference:
                if isinstance(raw, SecretStr):  # constructed in code (tests, simulators)
                    continue
                raise SecretSourceError(
                    f"{name}: secrets must come from the environment or a file "
                    f"(write {{env: VAR}} or {{file: /path}}), not a literal value"
                )
            resolved[name] = resolve_secret_reference(raw, field=name)
        return resolved

    @classmethod
    def secret_fields(cls) -> list[str]:
        return [
            name
            for name, info in cls.model_fields.items()
            if info.annotation in (SecretStr, SecretStr | None)
        ]


# --------------------------------------------------------------------------- messages


class OutboundWorkOrder(BaseModel):
    """What the hub asks a department to create: payload already built by the mapping."""

    hub_id: str
    department: str
    work_order_type: str | None = None
    priority: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    evidence: list[Attachment] = Field(default_factory=list)


class ExternalRef(BaseModel):
    """The department's handle for a work order, and its status when it told us."""

    external_id: str
    raw_status: str | None = None
    hub_reference: str | None = None


class OutboundNote(BaseModel):
    text: str
    author: str = "311"
    public: bool = True


class DepartmentEvent(StatusEvent):
    """A status event as an adapter reports it (same shape as the domain StatusEvent)."""


class RejectedInput(BaseModel):
    """Something the department sent that the adapter refused (a bad file, a record it
    cannot read). Never the content: it may hold PII, and its shape is the problem.

    `kind` is a short class, a label of ``hub_status_inputs_rejected_total``: keep the set
    small and fixed per adapter (``bad_file``, ``duplicate_file``, ``unexpected_file``,
    ``unsafe_name``, ``malformed_record``). `source` names the input (a file name already
    made safe, a record id); `digest` (sha256 hex of the refused bytes, when they were
    read) lets an operator match a resend without the content.
    """

    department: str
    source: str
    reason: str
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    digest: str | None = None
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class StatusPage(BaseModel):
    """One page of changes and the watermark to resume from.

    `more` says the department holds further changes after this page; the hub then asks
    again from `next_watermark` (without the overlap) within the same poll.

    `rejected`: what the department sent and the adapter refused on this page (classified,
    never raised: one bad file must not stop the good ones). The hub counts and logs each
    one and applies nothing from it. Subclasses of RejectedInput keep their own fields in
    dumps.
    """

    events: list[DepartmentEvent]
    next_watermark: datetime | None = None
    more: bool = False
    rejected: list[SerializeAsAny[RejectedInput]] = Field(default_factory=list)


# --------------------------------------------------------------------------- the port


class Adapter:
    """Base class of department adapters.

    Subclasses set `name`, `transport`, `config_model`, `capabilities` and implement the
    async methods of the capabilities they declare. Anything else raises
    CapabilityNotSupported, which the engine records as "not deliverable" rather than
    retrying. Methods raise only the classified errors above (or return normally).
    """

    name: ClassVar[str]
    transport: ClassVar[str] = "http"
    config_model: ClassVar[type[AdapterConfig]] = AdapterConfig
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    description: ClassVar[str] = ""

    def __init__(self, config: AdapterConfig, *, department: str | None = None) -> None:
        self.config = config
        self.department = department or self.name

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, department: str | None = None):
        return cls(cls.config_model.model_validate(dict(settings)), department=department)

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def status_codes(self) -> set[str]:
        """Every status code this department can emit (the conformance kit checks the
        department's mapping covers each one)."""
        return set()

    async def create(self, order: OutboundWorkOrder) -> ExternalRef:
        raise CapabilityNotSupported(f"{self.name} cannot create work orders")

    async def find_by_reference(self, hub_id: str) -> ExternalRef | None:
        raise CapabilityNotSupported(f"{self.name} cannot look up by reference")

    async def add_note(self, external_id: str, note: OutboundNote) -> None:
        raise CapabilityNotSupported(f"{self.name} cannot receive notes")

    async def attach(self, external_id: str, attachment: Attachment) -> None:
        raise CapabilityNotSupported(f"{self.name} cannot receive attachments")

    async def cancel(self, external_id: str, reason: str | None = None) -> None:
        raise CapabilityNotSupported(f"{self.name} cannot cancel work orders")

    async def get_status(self, external_ids: list[str]) -> list[DepartmentEvent]:
        raise CapabilityNotSupported(f"{self.name} cannot read status by id")

    async def poll_changes(self, since: datetime) -> StatusPage:
        raise CapabilityNotSupported(f"{self.name} cannot be polled for changes")

    async def aclose(self) -> None:
        """Release connections. Called once when the worker stops."""
