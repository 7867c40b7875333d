"""Code enforcement: cases in an Accela-like record system behind a SOAP case service.

The hub's case id travels as ``ExternalReference``, which the service stores and searches
but does not deduplicate on: create is exactly-once because the hub's engine looks the case
up with ``FindCaseByReference`` after an unknown outcome (find_by_reference).

Status sync polls ``GetCasesChangedSince`` (inclusive, local wall time): one event per
changed case carrying its current status; intermediate statuses between two polls collapse
into the latest one, which the hub tolerates.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import Field, SecretStr, field_validator

from adapters.codeenforcement.client import (
    CaseRefused,
    CaseServiceClient,
    parse_department_datetime,
    utc_to_local,
)
from hub.adapters import (
    Adapter,
    AdapterConfig,
    Capability,
    DepartmentEvent,
    ExternalRef,
    MalformedResponse,
    OutboundNote,
    OutboundWorkOrder,
    Permanent,
    StatusPage,
    Transient,
)
from hub.model import Attachment

# The RecordStatus enumeration of the shipped XSD (a test keeps the two equal).
STATUS_CODES = frozenset(
    {
        "Draft",
        "Received",
        "Assigned",
        "Pending Inspection",
        "Inspection Scheduled",
        "Inspected - Violation",
        "Notice of Violation Sent",
        "Re-inspection",
        "Abated by City",
        "Closed - Compliance",
        "Closed - No Violation Found",
        "Closed - Duplicate",
        "Closed - Referred",
        "Void",
        "Reopened",
    }
)
FINAL_STATUS_TYPES = frozenset({"CLOSED", "COMPLETE", "VOID", "DENIED"})
HUB_DOCUMENT_NOTE = "Evidence from 311"  # marks our uploads so they are not echoed back
VOID = "Void"


class CodeEnforcementConfig(AdapterConfig):
    base_url: str = Field(description="case service host, e.g. https://ce.example.gov")
    service_path: str = Field(
        default="/services/CaseService", description="SOAP endpoint path on base_url"
    )
    username: str = Field(description="service account (WS-Security UsernameToken)")
    password: SecretStr = Field(description="from {env: VAR} or {file: /path} only")
    timezone: str = Field(
        default="America/New_York", description="zone of the install's naive timestamps"
    )
    page_size: int = Field(default=500, ge=1, le=1000, description="cases per change poll")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if urlparse(value).scheme not in ("http", "https") or not urlparse(value).netloc:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("service_path")
    @classmethod
    def _path(cls, value: str) -> str:
        return "/" + value.lstrip("/")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class CodeEnforcementAdapter(Adapter):
    name = "codeenforcement"
    transport = "soap"
    config_model = CodeEnforcementConfig
    description = "Code-enforcement cases (Accela-like records over a SOAP case service)"
    capabilities = frozenset(
        {
            Capability.CREATE,
            Capability.FIND_BY_REFERENCE,
            Capability.ADD_NOTE,
            Capability.ATTACH,
            Capability.CANCEL,
            Capability.STATUS_POLL,
        }
    )

    def __init__(self, config: CodeEnforcementConfig, *, department: str | None = None) -> None:
        super().__init__(config, department=department)
        self.config: CodeEnforcementConfig = config
        self.zone = ZoneInfo(config.timezone)
        self.client = CaseServiceClient(
            endpoint=config.base_url + config.service_path,
            username=config.username,
            password=config.password,
            timeout=config.timeout_seconds,
            label=self.department,
        )

    def status_codes(self) -> set[str]:
        return set(STATUS_CODES)

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- cases --------------------------------------------------------------------

    async def create(self, order: OutboundWorkOrder) -> ExternalRef:
        case = dict(order.payload)
        case["ExternalReference"] = order.hub_id  # always ours: it is how we find it again
        if not case.get("RecordType") and order.work_order_type:
            case["RecordType"] = order.work_order_type
        record = await self.client.call("CreateCase", Case=case, idempotent=False)
        return self._ref("CreateCase", record)

    async def find_by_reference(self, hub_id: str) -> ExternalRef | None:
        record = await self.client.call(
            "FindCaseByReference", ExternalReference=hub_id, idempotent=True
        )
        return None if record is None else self._ref("FindCaseByReference", record)

    async def add_note(self, external_id: str, note: OutboundNote) -> None:
        await self.client.call(
            "AddNote",
            CaseId=external_id,
            Text=note.text,
            Author=note.author,
            Public=note.public,
            idempotent=False,
        )

    async def cancel(self, external_id: str, reason: str | None = None) -> None:
        try:
            await self.client.call(
                "CancelCase", CaseId=external_id, Reason=reason, idempotent=False
            )
        except CaseRefused as exc:
            # A retried cancel finds the case already void: that is success.
            if (
                exc.code != "STATUS_TRANSITION_NOT_ALLOWED"
                or await self._status(external_id) != VOID
            ):
                raise

    async def attach(self, external_id: str, attachment: Attachment) -> None:
        content = await self._read_evidence(attachment)
        if attachment.digest and Attachment.digest_of(content) != attachment.digest:
            raise Permanent(f"{self.department} attach: evidence digest mismatch")
        await self.client.call(
            "AttachDocument",
            CaseId=external_id,
            FileName=attachment.filename or Path(urlparse(attachment.url).path).name or "evidence",
            ContentType=attachment.content_type or "application/octet-stream",
            Content=content,
            Comment=HUB_DOCUMENT_NOTE,
            idempotent=False,
        )

    # -- status -------------------------------------------------------------------

    async def get_status(self, external_ids: list[str]) -> list[DepartmentEvent]:
        records = [
            await self.client.call("GetCase", CaseId=i, idempotent=True) for i in external_ids
        ]
        return [self._event(r) for r in records]

    async def poll_changes(self, since: datetime) -> StatusPage:
        # Since is inclusive: the newest change of the last page comes again, which the
        # hub's dedup on external_event_id absorbs (a free overlap).
        answer = await self.client.call(
            "GetCasesChangedSince",
            Since=utc_to_local(since, self.zone),
            MaxResults=self.config.page_size,
            idempotent=True,
        )
        records = (answer or {}).get("Case") if isinstance(answer, dict) else None
        if not isinstance(records, list):
            raise MalformedResponse(f"{self.department} GetCasesChangedSince: no case list")
        events = sorted((self._event(r) for r in records), key=lambda e: e.sequence or "")
        watermark = max((e.occurred_at for e in events), default=since)
        more = (
            str(answer.get("More", "")).lower() == "true" or len(records) >= self.config.page_size
        )
        return StatusPage(events=events, next_watermark=watermark, more=more)

    async def _status(self, external_id: str) -> str | None:
        record = await self.client.call("GetCase", CaseId=external_id, idempotent=True)
        return record.get("Status") if isinstance(record, dict) else None

    # -- mapping the department's records ----------------------------------------

    def _ref(self, operation: str, record: Any) -> ExternalRef:
        if not isinstance(record, dict) or not record.get("CaseId"):
            raise MalformedResponse(f"{self.department} {operation}: no CaseId in the answer")
        return ExternalRef(
            external_id=str(record["CaseId"]),
            raw_status=record.get("Status"),
            hub_reference=record.get("ExternalReference"),
        )

    def _event(self, record: Any) -> DepartmentEvent:
        if not isinstance(record, dict):
            raise MalformedResponse(f"{self.department}: case record expected")
        case_id, status, stamp = (
            record.get("CaseId"),
            record.get("Status"),
            record.get("StatusDate"),
        )
        occurred = parse_department_datetime(stamp, self.zone)
        if not case_id or not status or occurred is None:
            raise MalformedResponse(f"{self.department} case record lacks id/status/date")
        final = record.get("StatusType") in FINAL_STATUS_TYPES
        local = stamp.isoformat() if isinstance(stamp, datetime) else str(stamp)
        return DepartmentEvent(
            department=self.department,
            # One change = one (case, status, status date): stable across polls.
            external_event_id=f"{case_id}:{status}:{local}",
            external_id=str(case_id),
            hub_reference=record.get("ExternalReference"),
            raw_code=status,
            raw_text=status,
            occurred_at=occurred,
            sequence=occurred.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            closure_code=record.get("ClosureCode") if final else None,
            closure_text=record.get("ClosureComment") if final else None,
            evidence=self._photos(record) if final else [],
        )

    def _photos(self, record: dict[str, Any]) -> list[Attachment]:
        documents = (record.get("Documents") or {}).get("Document") or []
        photos = []
        for item in documents:
            if not isinstance(item, dict) or not item.get("Url"):
                continue
            if item.get("Comment") == HUB_DOCUMENT_NOTE:
                continue  # our own upload, not the inspector's evidence
            url = str(item["Url"])
            photos.append(
                Attachment(
                    url=url
                    if urlparse(url).scheme
                    else self.config.base_url + "/" + url.lstrip("/"),
                    content_type=item.get("ContentType") or "application/octet-stream",
                    size=item.get("Size") if isinstance(item.get("Size"), int) else None,
                    filename=item.get("FileName"),
                )
            )
        return photos

    async def _read_evidence(self, attachment: Attachment) -> bytes:
        parsed = urlparse(attachment.url)
        if parsed.scheme == "file":
            try:
                return await asyncio.to_thread(Path(unquote(parsed.path)).read_bytes)
            except FileNotFoundError:
                raise Permanent(f"{self.department} attach: evidence file is gone") from None
            except OSError as exc:
                raise Transient(
                    f"{self.department} attach: evidence unreadable ({exc.strerror})"
                ) from None
        try:
            response = await self.client.http.get(attachment.url)
        except httpx.HTTPError as exc:  # any fetch failure is worth a retry
            raise Transient(
                f"{self.department} attach: evidence fetch failed ({type(exc).__name__})"
            ) from None
        if response.status_code == 404:
            raise Permanent(f"{self.department} attach: evidence is gone (HTTP 404)")
        if response.status_code != 200:
            raise Transient(f"{self.department} attach: evidence fetch HTTP {response.status_code}")
        return response.content
