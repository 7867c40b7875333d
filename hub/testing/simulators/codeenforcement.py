"""An Accela-like code-enforcement case system behind a SOAP 1.1 service, for tests and demos.

Wire format: the WSDL shipped with the code-enforcement adapter (the department's published
contract, served here at ``GET /services/CaseService?wsdl`` with its XSD next to it);
``POST /services/CaseService`` takes document/literal envelopes for CreateCase,
FindCaseByReference, GetCase, GetCasesChangedSince, AddNote, CancelCase and
AttachDocument. Requests authenticate with a WS-Security UsernameToken (PasswordText).
Errors are HTTP 500 with a SOAP Fault whose detail is ``CaseServiceFault {Code, Message,
Retryable}`` (the Maximo MIF convention).

Shaped on real systems (shared/reference/department-apis.md): Accela record types
(``Enforcement/Property Maintenance/Overgrown Lot/NA``), agency-configured record statuses
with Accela's ``statusType``, inspections with results, violations cited by IPMC section,
closure codes. Timestamps are naive local time (America/New_York by default), like an
on-premises install.

Like the real systems, CreateCase does NOT deduplicate on ``ExternalReference``: duplicates
are visible in ``/__sim__/state`` and ``create_calls`` counts creates per reference.

Faults (same profile and ``/__sim__/`` routes as every simulator): latency; HTML 503 pages;
429 + Retry-After; a SOAP Fault (HTTP 500, ``DATABASE_DEADLOCK``, retryable) for the
"error envelope"; timeout after commit; and malformed answers after the commit, in turn an
HTML page with HTTP 200, an envelope cut in half, and an XML entity expansion ("billion
laughs") that a client must refuse without expanding.
"""

from __future__ import annotations

import base64
import itertools
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime, timedelta
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from lxml import etree
from lxml.builder import ElementMaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hub.testing.simulators.base import (
    ALL_FAULTS,
    HTML_ERROR_PAGE,
    BaseSimulator,
    ChangeIndex,
    Fault,
    FaultProfile,
    serve_forever,
)

NS = "urn:city:code-enforcement:cases:v1"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PASSWORD_TEXT = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordText"
)
SERVICE_PATH = "/services/CaseService"
XSD_NAME = "codeenforcement.xsd"
XML = "text/xml; charset=utf-8"
DEFAULT_USERNAME = "hub"
DEFAULT_PASSWORD = "hub-sim-ce-password"
FAKE_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64 + b"\xff\xd9"
MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
# No session tokens on this service (UsernameToken on every call): nothing to expire.
FAULTS = ALL_FAULTS - {Fault.TOKEN_EXPIRY}

# Record types the agency configured (Accela "Group/Type/SubType/Category") → the IPMC
# section (or local ordinance) an inspector cites for each.
RECORD_TYPES: dict[str, str] = {
    "Enforcement/Property Maintenance/Overgrown Lot/NA": "IPMC-302.4",
    "Enforcement/Property Maintenance/Building/NA": "IPMC-304.1",
    "Enforcement/Property Maintenance/Unsafe Structure/NA": "IPMC-108.1",
    "Enforcement/Sanitation/Improper Storage/NA": "IPMC-308.1",
    "Enforcement/Vehicle/Abandoned/NA": "IPMC-302.8",
    "Enforcement/Graffiti/Private Property/NA": "IPMC-302.9",  # routed by publicworks.yaml
    "ServiceRequest/Health/Rodent Activity/NA": "IPMC-309.1",
    "ServiceRequest/Nuisance/Residential Noise/NA": "ORD-NOISE-1",
}
VIOLATION_TEXT = {
    "IPMC-108.1": "Unsafe structure",
    "IPMC-302.1": "Exterior property not maintained in a clean, safe and sanitary condition",
    "IPMC-302.4": "Weeds or plant growth in excess of 10 inches",
    "IPMC-302.8": "Inoperable or unlicensed motor vehicle",
    "IPMC-302.9": "Defacement of property (graffiti) not restored",
    "IPMC-304.1": "Exterior structure not maintained in good repair",
    "IPMC-308.1": "Accumulation of rubbish or garbage",
    "IPMC-309.1": "Rodent harborage or infestation",
    "ORD-NOISE-1": "Residential noise above permitted level",
}
# Agency status → Accela statusType.
STATUS_TYPES: dict[str, str] = {
    "Draft": "INCOMPLETE",
    "Received": "UNASSIGNED",
    "Assigned": "OPEN",
    "Pending Inspection": "PENDING",
    "Inspection Scheduled": "PENDING",
    "Inspected - Violation": "OPEN",
    "Notice of Violation Sent": "OPEN",
    "Re-inspection": "PENDING",
    "Abated by City": "CLOSED",
    "Closed - Compliance": "CLOSED",
    "Closed - No Violation Found": "CLOSED",
    "Closed - Duplicate": "CLOSED",
    "Closed - Referred": "CLOSED",
    "Void": "VOID",
    "Reopened": "OPEN",
}
STATUS_CODES: tuple[str, ...] = tuple(STATUS_TYPES)
FINAL_TYPES = frozenset({"CLOSED", "VOID"})
# Where an inspector takes a case next.
NEXT_STATUS: dict[str, str] = {
    "Draft": "Received",
    "Received": "Assigned",
    "Assigned": "Pending Inspection",
    "Pending Inspection": "Inspection Scheduled",
    "Inspection Scheduled": "Inspected - Violation",
    "Inspected - Violation": "Notice of Violation Sent",
    "Notice of Violation Sent": "Re-inspection",
    "Re-inspection": "Closed - Compliance",
    "Reopened": "Re-inspection",
}
# How `advance(close=True)` ends a case, by case number: (status, closure code, comment).
CLOSURES = (
    ("Closed - Compliance", "COMPLIED", "Owner corrected the violation; re-inspection passed."),
    ("Abated by City", "ABATED", "City contractor abated the nuisance; lien filed."),
    ("Closed - No Violation Found", "NO_VIOLATION", "Inspected: no violation at the address."),
)
CLOSURE_FOR_STATUS = {
    **{status: (code, comment) for status, code, comment in CLOSURES},
    "Closed - Duplicate": ("DUPLICATE", "Duplicate of an open case."),
    "Closed - Referred": ("REFERRED", "Referred to the responsible agency."),
}
INSPECTORS = ("J. ALVAREZ", "M. CHEN", "R. OKAFOR", "S. PATEL")

E = ElementMaker(namespace=NS, nsmap={"ce": NS})
S = ElementMaker(namespace=SOAP_ENV, nsmap={"soap": SOAP_ENV})


class ServiceFault(Exception):
    """A business fault: answered as HTTP 500 + SOAP Fault, nothing committed."""

    def __init__(
        self, code: str, message: str, *, faultcode: str = "soap:Client", retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.faultcode, self.retryable = (
            code,
            message,
            faultcode,
            retryable,
        )


def soap_fault(
    faultcode: str, message: str, code: str, *, retryable: bool | None = None
) -> Response:
    """HTTP 500 with a SOAP 1.1 Fault carrying a CaseServiceFault detail."""
    detail = E.CaseServiceFault(E.Code(code), E.Message(message))
    if retryable is not None:
        detail.append(E.Retryable("true" if retryable else "false"))
    nsmap = {"soap": SOAP_ENV, "wsse": WSSE}
    fault = etree.Element(f"{{{SOAP_ENV}}}Fault", nsmap=nsmap)
    for name, value in (("faultcode", faultcode), ("faultstring", message)):
        etree.SubElement(fault, name).text = value
    etree.SubElement(fault, "detail").append(detail)
    return _xml_response(S.Envelope(S.Body(fault)), status_code=500)


def billion_laughs() -> bytes:
    """An envelope whose body references a nine-level entity expansion (~3 GB expanded)."""
    levels = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10)
    ]
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE lolz [\n'
        + "\n".join(levels)
        + f'\n]>\n<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body>'
        + f'<ce:CreateCaseResponse xmlns:ce="{NS}"><ce:Case><ce:CaseId>&lol9;</ce:CaseId>'
        + "</ce:Case></ce:CreateCaseResponse></soap:Body></soap:Envelope>"
    ).encode()


def _xml_response(element: etree._Element, *, status_code: int = 200) -> Response:
    body = etree.tostring(element, xml_declaration=True, encoding="utf-8")
    return Response(body, status_code=status_code, media_type=XML)


def _safe_parse(body: bytes) -> etree._Element:
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    root = etree.fromstring(body, parser)
    if root.getroottree().docinfo.doctype:
        raise ValueError("DTD refused")
    return root


def _to_data(element: etree._Element) -> Any:
    """Request element → dict (repeated children → list; leaves → text)."""
    children = list(element)
    if not children:
        return element.text or ""
    data: dict[str, Any] = {}
    for child in children:
        if not isinstance(child.tag, str):
            continue
        name, value = etree.QName(child).localname, _to_data(child)
        if name in data:
            data[name] = (
                [*data[name], value] if isinstance(data[name], list) else [data[name], value]
            )
        else:
            data[name] = value
    return data


def _stamp(value: datetime | date | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    return value.isoformat()


def _local(value: str, zone: ZoneInfo) -> datetime:
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is None else parsed.astimezone(zone).replace(tzinfo=None)


class CodeEnforcementSimulator(BaseSimulator):
    name = "codeenforcement"

    def __init__(
        self,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        timezone: str = "America/New_York",
        record_types: Iterable[str] | None = None,
        malformed_kinds: Iterable[str] = ("html", "truncated", "entities"),
        faults: FaultProfile | str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__(faults)
        self.credentials = {username: password}
        self.zone = ZoneInfo(timezone)
        self.record_types = set(record_types) if record_types is not None else set(RECORD_TYPES)
        self.malformed_kinds = tuple(malformed_kinds)  # the order the malformed fault cycles
        self.clear()

    def clear(self) -> None:
        with self.lock:
            self.records: dict[str, dict[str, Any]] = {}
            # ExternalReference → CaseIds, oldest first: the real system indexes the field,
            # and a scan per lookup made a 10,000-case soak's lookups time out here.
            self.by_reference: dict[str, list[str]] = {}
            # Indexes a real system keeps too, so polls and inspectors stay O(changes), not
            # O(records), however many records a long replay leaves here: (StatusDate,
            # CaseId) in date order (GetCasesChangedSince) and the CaseIds of open cases.
            self.index = ChangeIndex()
            self.events: list[dict[str, Any]] = []
            self.files: dict[int, tuple[str, bytes]] = {}
            self.create_calls: Counter[str] = Counter()
            self.calls: Counter[str] = Counter()
            self._next_case = 1
            self._next_id = 1
            self._last_local = datetime.min

    # -- clock and ids --------------------------------------------------------------

    def local_now(self) -> datetime:
        """Naive local wall time, strictly increasing so status dates order events."""
        now = datetime.now(self.zone).replace(tzinfo=None)
        if now <= self._last_local:
            now = self._last_local + timedelta(microseconds=1)
        self._last_local = now
        return now

    def _indexed(self, record: dict[str, Any]) -> None:
        """Index a record's new status date and open/closed state (callers hold the lock)."""
        self.index.note(
            record["CaseId"], record["StatusDate"], is_open=record["StatusType"] not in FINAL_TYPES
        )

    def _changed_since(self, since: datetime) -> Iterator[dict[str, Any]]:
        """Records whose status date is at or after `since`, in date order: each once,
        at its latest change (an earlier entry of a record changed since is skipped)."""
        with self.lock:
            entries = self.index.changed(since)
        for stamp, case_id in entries:
            record = self.records.get(case_id)
            if record is not None and record["StatusDate"] == stamp:
                yield record

    def _new_id(self) -> int:
        value, self._next_id = self._next_id, self._next_id + 1
        return value

    # -- record changes (callers hold self.lock) --------------------------------------

    def _set_status(self, record: dict[str, Any], status: str) -> dict[str, Any]:
        previous, now = record["Status"], self.local_now()
        record.update(Status=status, StatusType=STATUS_TYPES[status], StatusDate=now)
        self._indexed(record)
        if STATUS_TYPES[status] in FINAL_TYPES:
            record["ClosedDate"] = now
        elif status == "Reopened":
            record.update(ClosedDate=None, ClosureCode=None, ClosureComment=None)
        event = {
            "Sequence": len(self.events) + 1,
            "CaseId": record["CaseId"],
            "ExternalReference": record["ExternalReference"],
            "OldStatus": previous,
            "NewStatus": status,
            "StatusDate": _stamp(now),
        }
        self.events.append(event)
        record["events"].append(event)
        return event

    def _inspect(self, record: dict[str, Any], kind: str, result: str) -> None:
        number = len(record["Inspections"])
        record["Inspections"].append(
            {
                "InspectionId": self._new_id(),
                "Type": kind,
                "Result": result,
                "ResultDate": None if result == "Scheduled" else self.local_now(),
                "Inspector": INSPECTORS[(self._next_case + number) % len(INSPECTORS)],
                "Comments": None,
            }
        )

    def _result(self, record: dict[str, Any], result: str) -> None:
        scheduled = [i for i in record["Inspections"] if i["Result"] == "Scheduled"]
        if scheduled:
            scheduled[-1].update(Result=result, ResultDate=self.local_now())
        else:
            self._inspect(record, "Initial Inspection", result)

    def _cite(self, record: dict[str, Any]) -> None:
        code = RECORD_TYPES.get(record["RecordType"], "IPMC-302.1")
        cited = self.local_now()
        record["Violations"].append(
            {
                "Code": code,
                "Description": VIOLATION_TEXT[code],
                "CitedDate": cited,
                "CorrectBy": (cited + timedelta(days=14)).date(),
                "Corrected": False,
            }
        )

    def _add_document(
        self, record: dict[str, Any], name: str, content_type: str, body: bytes, **extra: Any
    ) -> dict[str, Any]:
        document_id = self._new_id()
        self.files[document_id] = (content_type, body)
        item = {
            "DocumentId": document_id,
            "FileName": name,
            "ContentType": content_type,
            "Size": len(body),
            "Url": f"/__sim__/documents/{document_id}",
            "Comment": extra.get("Comment"),
            "UploadedBy": extra.get("UploadedBy"),
        }
        record["Documents"].append(item)
        return item

    def _close(self, record: dict[str, Any], status: str | None = None) -> dict[str, Any]:
        number = int(record["CaseId"].rsplit("-", 1)[-1])
        if status is None:
            status = CLOSURES[number % len(CLOSURES)][0]
        code, comment = CLOSURE_FOR_STATUS[status]
        result = "Passed" if code in ("COMPLIED", "NO_VIOLATION") else "Failed"
        self._result(record, result)
        for violation in record["Violations"]:
            violation["Corrected"] = code in ("COMPLIED", "ABATED")
        record.update(ClosureCode=code, ClosureComment=comment)
        for n in (1, 2):
            self._add_document(
                record, f"inspection-{record['CaseId']}-{n}.jpg", "image/jpeg", FAKE_JPEG,
                UploadedBy="INSPECTOR",
            )  # fmt: skip
        return self._set_status(record, status)

    def _void(self, record: dict[str, Any], reason: str | None) -> dict[str, Any]:
        record.update(ClosureCode="VOIDED", ClosureComment=reason or "Voided on request")
        for inspection in record["Inspections"]:
            if inspection["Result"] == "Scheduled":
                inspection.update(Result="Cancelled", ResultDate=self.local_now())
        return self._set_status(record, "Void")

    def _step(self, record: dict[str, Any], *, close: bool, status: str | None) -> dict:
        target = status or ("close" if close else NEXT_STATUS.get(record["Status"], "Assigned"))
        if target == "close" or (target in STATUS_TYPES and STATUS_TYPES[target] == "CLOSED"):
            event = self._close(record, None if target == "close" else target)
        elif target == "Void":
            event = self._void(record, "Voided by the department")
        else:
            if target == "Inspection Scheduled" or target == "Re-inspection":
                kind = "Initial Inspection" if target == "Inspection Scheduled" else target
                self._inspect(record, kind, "Scheduled")
            if target == "Inspected - Violation":
                self._result(record, "Failed")
                self._cite(record)
            event = self._set_status(record, target)
        photos = [d["Url"] for d in record["Documents"] if d["UploadedBy"] == "INSPECTOR"]
        return {**event, "ClosureCode": record["ClosureCode"], "Photos": photos}

    def _new_record(self, data: dict[str, Any]) -> dict[str, Any]:
        now = self.local_now()
        number, self._next_case = self._next_case, self._next_case + 1
        address = data.get("Address") if isinstance(data.get("Address"), dict) else {}
        return {
            "CaseId": f"ENF{now:%y}-{number:05d}",
            "RecordType": data["RecordType"],
            "Status": "Received",
            "StatusType": STATUS_TYPES["Received"],
            "StatusDate": now,
            "OpenedDate": now,
            "ClosedDate": None,
            "Priority": data.get("Priority") or None,
            "Description": data.get("Description") or None,
            "AssignedToDepartment": data.get("AssignedToDepartment") or None,
            "StreetAddress": address.get("StreetAddress"),
            "ExternalReference": data["ExternalReference"],
            "ClosureCode": None,
            "ClosureComment": None,
            "Inspections": [],
            "Violations": [],
            "Documents": [],
            # simulator bookkeeping, not in CaseRecord
            "ReportedDate": data.get("ReportedDate") or None,
            "Contact": data.get("Contact") if isinstance(data.get("Contact"), dict) else None,
            "notes": [],
            "events": [],
        }

    # -- operations ----------------------------------------------------------------

    def create_case(self, data: dict[str, Any]) -> etree._Element:
        case = data.get("Case") if isinstance(data.get("Case"), dict) else {}
        reference = case.get("ExternalReference")
        if reference:
            self.create_calls[str(reference)] += 1
        address = case.get("Address") if isinstance(case.get("Address"), dict) else {}
        missing = [
            name
            for name, value in (
                ("RecordType", case.get("RecordType")),
                ("ExternalReference", reference),
                ("Address.StreetAddress", address.get("StreetAddress")),
            )
            if not value
        ]
        if missing:
            raise ServiceFault("VALIDATION_ERROR", f"Required fields missing: {', '.join(missing)}")
        if case["RecordType"] not in self.record_types:
            raise ServiceFault("INVALID_RECORD_TYPE", "RecordType is not configured for agency")
        with self.lock:
            record = self._new_record(case)
            self.records[record["CaseId"]] = record
            self.by_reference.setdefault(str(reference), []).append(record["CaseId"])
            self._indexed(record)
            event = {"Sequence": len(self.events) + 1, "CaseId": record["CaseId"]}
            self.events.append(
                {**event, "ExternalReference": reference, "OldStatus": None,
                 "NewStatus": "Received", "StatusDate": _stamp(record["StatusDate"])}
            )  # fmt: skip
            record["events"].append(self.events[-1])
            return E.CreateCaseResponse(self._case_xml(record))

    def find_case_by_reference(self, data: dict[str, Any]) -> etree._Element:
        reference = data.get("ExternalReference")
        if not reference:
            raise ServiceFault("VALIDATION_ERROR", "Required fields missing: ExternalReference")
        hits = self.by_reference.get(reference)
        answer = E.FindCaseByReferenceResponse()
        if hits:
            answer.append(self._case_xml(self.records[hits[0]]))  # the oldest, if duplicated
        return answer

    def get_case(self, data: dict[str, Any]) -> etree._Element:
        return E.GetCaseResponse(self._case_xml(self._record(data)))

    def get_cases_changed_since(self, data: dict[str, Any]) -> etree._Element:
        try:
            since = _local(str(data.get("Since") or ""), self.zone)
            limit = int(data.get("MaxResults") or 100)
        except ValueError:
            raise ServiceFault("VALIDATION_ERROR", "Since must be an xsd:dateTime") from None
        changed = list(itertools.islice(self._changed_since(since), limit + 1))
        answer = E.GetCasesChangedSinceResponse(*(self._case_xml(r) for r in changed[:limit]))
        answer.append(E.More("true" if len(changed) > limit else "false"))
        return answer

    def add_note(self, data: dict[str, Any]) -> etree._Element:
        record = self._record(data)
        if not data.get("Text"):
            raise ServiceFault("VALIDATION_ERROR", "Required fields missing: Text")
        with self.lock:
            note_id = self._new_id()
            record["notes"].append(
                {
                    "NoteId": note_id,
                    "Text": data["Text"],
                    "Author": data.get("Author"),
                    "Public": data.get("Public") != "false",
                    "Created": _stamp(self.local_now()),
                }
            )
        return E.AddNoteResponse(E.NoteId(str(note_id)))

    def cancel_case(self, data: dict[str, Any]) -> etree._Element:
        record = self._record(data)
        with self.lock:
            if record["StatusType"] in FINAL_TYPES:
                raise ServiceFault(
                    "STATUS_TRANSITION_NOT_ALLOWED", f"Case is {record['Status']}: cannot void"
                )
            self._void(record, data.get("Reason"))
            return E.CancelCaseResponse(self._case_xml(record))

    def attach_document(self, data: dict[str, Any]) -> etree._Element:
        record = self._record(data)
        try:
            content = base64.b64decode(str(data.get("Content") or ""), validate=True)
        except ValueError:
            raise ServiceFault("DOCUMENT_REJECTED", "Content is not base64") from None
        if not content or len(content) > MAX_DOCUMENT_BYTES:
            raise ServiceFault("DOCUMENT_REJECTED", "Document is empty or too large")
        with self.lock:
            item = self._add_document(
                record,
                str(data.get("FileName") or "upload.bin"),
                str(data.get("ContentType") or "application/octet-stream"),
                content,
                Comment=data.get("Comment") or None,
                UploadedBy="INTERFACE",
            )
        return E.AttachDocumentResponse(E.DocumentId(str(item["DocumentId"])))

    def _record(self, data: dict[str, Any]) -> dict[str, Any]:
        record = self.records.get(str(data.get("CaseId") or ""))
        if record is None:
            raise ServiceFault("CASE_NOT_FOUND", "No case with this CaseId")
        return record

    # -- XML ----------------------------------------------------------------------

    def _case_xml(self, record: dict[str, Any]) -> etree._Element:
        """A CaseRecord, children in the XSD's sequence order (zeep is strict about it)."""
        case = E.Case()
        for name in (
            "CaseId", "RecordType", "Status", "StatusType", "StatusDate", "OpenedDate",
            "ClosedDate", "Priority", "Description", "AssignedToDepartment", "StreetAddress",
            "ExternalReference", "ClosureCode", "ClosureComment",
        ):  # fmt: skip
            _leaf(case, name, record[name])
        for group, item, fields in (
            ("Inspections", "Inspection", INSPECTION_FIELDS),
            ("Violations", "Violation", VIOLATION_FIELDS),
            ("Documents", "Document", DOCUMENT_FIELDS),
        ):
            if record[group]:
                holder = etree.SubElement(case, f"{{{NS}}}{group}")
                for entry in record[group]:
                    child = etree.SubElement(holder, f"{{{NS}}}{item}")
                    for name in fields:
                        _leaf(child, name, entry[name])
        return case

    def _envelope(self, body: etree._Element) -> Response:
        return _xml_response(S.Envelope(S.Body(body)))

    # -- HTTP plumbing ------------------------------------------------------------

    def _authenticated(self, envelope: etree._Element) -> bool:
        token = envelope.find(f"{{{SOAP_ENV}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
        if token is None:
            return False
        user = token.findtext(f"{{{WSSE}}}Username") or ""
        password = token.find(f"{{{WSSE}}}Password")
        if password is None or password.get("Type", PASSWORD_TEXT) != PASSWORD_TEXT:
            return False
        expected = self.credentials.get(user)
        return expected is not None and secrets.compare_digest(password.text or "", expected)

    def _operations(self) -> dict[str, Callable[[dict[str, Any]], etree._Element]]:
        return {
            "CreateCase": self.create_case,
            "FindCaseByReference": self.find_case_by_reference,
            "GetCase": self.get_case,
            "GetCasesChangedSince": self.get_cases_changed_since,
            "AddNote": self.add_note,
            "CancelCase": self.cancel_case,
            "AttachDocument": self.attach_document,
        }

    async def _soap(self, request: Request) -> Response:
        fault, early = await self.begin(FAULTS)
        if early is not None:
            return early
        try:
            envelope = _safe_parse(await request.body())
            body = envelope.find(f"{{{SOAP_ENV}}}Body")
            operation = next(c for c in body if isinstance(c.tag, str))  # type: ignore[union-attr]
        except (etree.XMLSyntaxError, ValueError, TypeError, StopIteration):
            return soap_fault(
                "soap:Client", "Request is not a SOAP 1.1 envelope", "VALIDATION_ERROR"
            )
        if not self._authenticated(envelope):
            return soap_fault(
                "wsse:FailedAuthentication",
                "The security token could not be authenticated or authorized",
                "AUTHENTICATION_FAILED",
            )
        name = etree.QName(operation).localname
        handler = self._operations().get(name) if etree.QName(operation).namespace == NS else None
        if handler is None:
            return soap_fault("soap:Client", f"Unknown operation {name}", "VALIDATION_ERROR")
        self.calls[name] += 1
        try:
            answer = self._envelope(handler(_to_data(operation)))
        except ServiceFault as exc:
            answer = soap_fault(exc.faultcode, exc.message, exc.code, retryable=exc.retryable)
        return await self.finish(fault, answer)

    async def _wsdl(self, request: Request) -> Response:
        if "wsdl" not in {k.lower() for k in request.query_params}:
            return Response("GET ?wsdl for the service description", media_type="text/plain")
        address = f"{request.base_url}".rstrip("/") + SERVICE_PATH
        text = _contract("codeenforcement.wsdl").replace(
            'location="http://localhost/services/CaseService"', f'location="{address}"'
        )
        return Response(text, media_type=XML)

    async def _xsd(self, request: Request) -> Response:
        return Response(_contract(XSD_NAME), media_type=XML)

    async def _document(self, request: Request) -> Response:
        try:
            found = self.files.get(int(request.path_params["document_id"]))
        except ValueError:
            found = None
        if found is None:
            return Response(status_code=404)
        return Response(found[1], media_type=found[0])

    def api_routes(self) -> list[BaseRoute]:
        return [
            Route(SERVICE_PATH, self._soap, methods=["POST"]),
            Route(SERVICE_PATH, self._wsdl, methods=["GET"]),
            Route(f"/services/{XSD_NAME}", self._xsd, methods=["GET"]),
            Route("/__sim__/documents/{document_id}", self._document, methods=["GET"]),
        ]

    # -- faults -------------------------------------------------------------------

    def error_envelope(self) -> Response:
        return soap_fault(
            "soap:Server", "Transaction deadlocked; try again", "DATABASE_DEADLOCK", retryable=True
        )

    def malformed(self, response: Response) -> Response:
        """Cycle through `malformed_kinds`: an HTML page (HTTP 200), the envelope cut in
        half, and a billion-laughs entity expansion."""
        count = self.faults.counters[Fault.MALFORMED.value]
        kind = self.malformed_kinds[(count - 1) % len(self.malformed_kinds)]
        if kind == "html":
            return Response(HTML_ERROR_PAGE, status_code=200, media_type="text/html")
        if kind == "entities":
            return Response(billion_laughs(), media_type=XML)
        body = bytes(response.body)
        return Response(body[: max(1, len(body) // 2)], media_type=XML)

    # -- admin --------------------------------------------------------------------

    def advance(
        self,
        count: int,
        *,
        close: bool = False,
        case_ids: list[str] | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """Inspectors work `count` open cases (oldest first, or `case_ids`): one step along
        Received → Assigned → … → Closed, straight to a closure with `close`, or to `status`."""
        if status is not None and status not in STATUS_TYPES:
            raise ValueError(f"unknown status {status!r}")
        with self.lock:
            reopen = status == "Reopened"  # only a closed case can be reopened
            if case_ids:
                pool: Iterable[str] = case_ids
            else:
                pool = list(self.records) if reopen else self.index.open
            records = (self.records[i] for i in pool if i in self.records)
            workable = (r for r in records if (r["StatusType"] in FINAL_TYPES) == reopen)
            picked = list(itertools.islice(workable, max(0, count)))
            return [self._step(r, close=close, status=status) for r in picked]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            records = [
                _public(r, self.create_calls[r["ExternalReference"]]) for r in self.records.values()
            ]
            per_reference = Counter(r["ExternalReference"] for r in self.records.values())
            return {
                "department": self.name,
                "records": records,
                "create_calls": dict(self.create_calls),
                "duplicates": {k: n for k, n in per_reference.items() if n > 1},
                "events": len(self.events),
                "calls": dict(self.calls),
            }


INSPECTION_FIELDS = ("InspectionId", "Type", "Result", "ResultDate", "Inspector", "Comments")
VIOLATION_FIELDS = ("Code", "Description", "CitedDate", "CorrectBy", "Corrected")
DOCUMENT_FIELDS = ("DocumentId", "FileName", "ContentType", "Size", "Url", "Comment", "UploadedBy")


def _leaf(parent: etree._Element, name: str, value: Any) -> None:
    if value is None:
        return  # optional elements are left out, not nil
    child = etree.SubElement(parent, f"{{{NS}}}{name}")
    if isinstance(value, bool):
        child.text = "true" if value else "false"
    elif isinstance(value, datetime | date):
        child.text = _stamp(value)
    else:
        child.text = str(value)


def _public(record: dict[str, Any], create_calls: int) -> dict[str, Any]:
    """JSON-ready view of a record for /__sim__/state (contact PII is not echoed)."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime | date):
            return _stamp(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    view = {k: plain(v) for k, v in record.items() if k != "Contact"}
    view["has_contact"] = bool(record.get("Contact"))
    view["create_calls"] = create_calls
    return view


def _contract(name: str) -> str:
    """The department's published contract: the WSDL/XSD shipped with the adapter package
    (one copy, so simulator and adapter can never disagree)."""
    return resources.files("adapters.codeenforcement").joinpath("wsdl", name).read_text("utf-8")


def main(port: int, host: str = "127.0.0.1", faults: str = "none") -> None:
    """Standalone simulator (``hub simulate codeenforcement --port N``); blocks serving.

    WS-Security UsernameToken: ``hub`` / ``hub-sim-ce-password``.
    """
    serve_forever(CodeEnforcementSimulator(faults=faults), host=host, port=port)
