"""A Trimble Cityworks-like public-works department (service requests), for tests and demos.

Wire format as in shared/reference/department-apis.md §2.1: ``POST /Services/{Area}/{Service}/
{Method}`` with a form body ``data=<JSON>&token=<token>``; answers are HTTP 200 with the
envelope ``{Status, Message, Value, ErrorMessages, WarningMessages, SuccessMessages}`` even
on business errors (Status 0 Ok, 1 Error, 2 Unauthorized, 3 InvalidCredentials).

Real Cityworks methods reproduced (names and request fields from the Cityworks SDK):
``General/Authentication/Authenticate``, ``Ams/ServiceRequest/{Create, ById, ByIds,
ByOtherSystemId, Search, AddComments, Cancel, Close, Problems, Statuses}``,
``AMS/Attachments/AddRequestAttachment``. ``Ams/ServiceRequest/AuditLog`` is a real method
name but its answer shape here is the simulator's own.

Simulator-only (not Cityworks): ``Ams/ServiceRequest/Changes {Since, Limit}`` (the global
event feed by sequence), the record fields ``DateTimeModified`` (what ``Search
DateModifiedBegin/End`` filters on) and ``Attachments`` (files and crew photos with
site-relative URLs served from ``/__sim__/files/{id}``), and the ``/__sim__/*`` admin routes.

Like the real system, Create does NOT deduplicate on ``OtherSystemId``: duplicates are
visible in ``/__sim__/state`` and ``create_calls`` counts create calls per reference.
Timestamps are naive local time (America/New_York by default), as an on-prem install has.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from hub.testing.simulators.base import (
    ALL_FAULTS,
    BaseSimulator,
    ChangeIndex,
    Fault,
    FaultProfile,
    serve_forever,
)

# St. Louis Citizens' Service Bureau (a Cityworks city): agency-configured vocabulary.
STATUS_CODES: tuple[str, ...] = (
    "Canceled",
    "Closed",
    "Dispatch",
    "Extended",
    "Hearing",
    "Inspect",
    "Letter",
    "New",
    "On Hold",
    "Pending",
    "Refer",
    "Reinsp",
    "Web",
)
FINAL_STATUSES = frozenset({"Canceled", "Closed"})
# Where a crew takes a request next; "Closed" sets a resolution and adds photos.
NEXT_STATUS: dict[str, str] = {
    "New": "Dispatch",
    "Web": "Dispatch",
    "Pending": "Dispatch",
    "Refer": "Dispatch",
    "On Hold": "Dispatch",
    "Dispatch": "Inspect",
    "Extended": "Inspect",
    "Hearing": "Inspect",
    "Letter": "Inspect",
    "Inspect": "Closed",
    "Reinsp": "Closed",
}
PROBLEM_CODES: dict[str, str] = {
    "POTHOLE": "Pothole in street",
    "STREETLIGHT": "Streetlight out",
    "SIDEWALK": "Damaged sidewalk",
    "DEBRIS": "Debris in street",
    "DUMPING": "Illegal dumping",
    "GRAFFITI": "Graffiti removal",
    "TREE": "Tree down or hazard",
    "SIGN": "Missing or damaged sign",
    "SEWER": "Sewer or inlet problem",
}
RESOLUTIONS = (
    "Repaired by crew; site left safe.",
    "Debris removed and area swept.",
    "Inspected: no defect found at location.",
    "Referred to utility owner; temporary barricade placed.",
)
DEFAULT_LOGIN = "hub"
DEFAULT_PASSWORD = "hub-sim-password"
FAKE_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64 + b"\xff\xd9"

# Status 1 error codes (ServiceRequestErrorCodes in the Cityworks SDK).
ERR_UNKNOWN, ERR_INVALID_ID, ERR_INVALID_FIELD = (
    (1, "Unknown"),
    (2, "InvalidRequestId"),
    (30, "InvalidField"),
)
ERR_CANT_CLOSE, ERR_CANT_CANCEL = (31, "StatusCantBeClosed"), (32, "StatusCantBeCanceled")
ERR_REQUIRED, ERR_NOT_FOUND = (33, "RequiredFields"), (35, "ItemNotFound")

Handler = Callable[[dict[str, Any], Any], Awaitable[dict[str, Any]]]


def envelope(
    value: Any = None,
    *,
    status: int = 0,
    message: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "Status": status,
        "Message": message,
        "Value": value,
        "ErrorMessages": errors or [],
        "WarningMessages": [],
        "SuccessMessages": [],
    }


def error(code: tuple[int, str], text: str) -> dict[str, Any]:
    number, name = code
    item = {
        "Code": number,
        "Name": name,
        "DisplayText": text,
        "MessageType": 2,
        "Service": "ServiceRequest",
        "DebugDetails": None,
        "InnerMessage": None,
    }
    return envelope(status=1, message=text, errors=[item])


@dataclass(frozen=True)
class Operation:
    handler: Handler
    auth: bool = True
    faults: frozenset[Fault] = ALL_FAULTS


class PublicWorksSimulator(BaseSimulator):
    name = "publicworks"

    def __init__(
        self,
        *,
        login_name: str = DEFAULT_LOGIN,
        password: str = DEFAULT_PASSWORD,
        token_ttl_seconds: float = 1800.0,
        token_expiry_grace_seconds: float = 1.0,
        timezone: str = "America/New_York",
        problem_codes: Iterable[str] | None = None,
        faults: FaultProfile | str | dict[str, Any] | None = None,
        timestamp_resolution: str = "microseconds",
    ) -> None:
        super().__init__(faults)
        # "seconds" is what an on-prem Cityworks stores: two changes of one request within
        # a second then carry the same DateTimeModified (the hub must not misorder them).
        if timestamp_resolution not in ("seconds", "milliseconds", "microseconds"):
            raise ValueError(f"unknown timestamp resolution {timestamp_resolution!r}")
        self.timestamp_resolution = timestamp_resolution
        self.credentials = {login_name: password}
        self.token_ttl_seconds = token_ttl_seconds
        # The token_expiry fault spares tokens younger than this: a real token does not
        # lapse the instant after login, and a client that re-logs in once must recover.
        self.token_expiry_grace_seconds = token_expiry_grace_seconds
        self.zone = ZoneInfo(timezone)
        self.problem_codes = set(problem_codes) if problem_codes is not None else set(PROBLEM_CODES)
        self.tokens: dict[str, tuple[float, float]] = {}  # token → (issued, expires) epoch s
        self.clear()

    def clear(self) -> None:
        with self.lock:
            self.records: dict[int, dict[str, Any]] = {}
            # OtherSystemId → RequestIds, oldest first: the real system indexes the field,
            # and a scan per lookup would make a 100,000-record backlog time out here.
            self.by_reference: dict[str, list[int]] = {}
            # Indexes a real system keeps too, so polls and crews stay O(changes), not
            # O(records), however many records a long replay leaves here: (modified,
            # RequestId) in modification order (Search by DateModifiedBegin/End) and the
            # RequestIds of open records (advance).
            self.index = ChangeIndex()
            self.events: list[dict[str, Any]] = []
            self.history: dict[int, list[dict[str, Any]]] = {}  # RequestId → its events
            self.comments: dict[int, list[dict[str, Any]]] = {}
            self.files: dict[int, tuple[str, bytes]] = {}
            self.create_calls: Counter[str] = Counter()
            self._next_request_id = 100001
            self._next_file_id = 1
            self._last_local = datetime.min

    # -- clock --------------------------------------------------------------------

    def local_now(self) -> datetime:
        """Naive local wall time, strictly increasing so modification times order events
        (stamped at `timestamp_resolution`, so with "seconds" they may tie)."""
        now = datetime.now(self.zone).replace(tzinfo=None)
        if now <= self._last_local:
            now = self._last_local + timedelta(microseconds=1)
        self._last_local = now
        return now

    def _stamp(self) -> str:
        return self.local_now().isoformat(timespec=self.timestamp_resolution)

    # -- record changes (callers hold self.lock) ------------------------------------

    def _set_status(self, record: dict[str, Any], status: str) -> dict[str, Any]:
        previous, stamp = record["Status"], self._stamp()
        record["Status"], record["DateTimeModified"] = status, stamp
        self._indexed(record)
        return self._event(record, previous, status, stamp)

    def _event(self, record: dict[str, Any], old: str | None, new: str, stamp: str) -> dict:
        event = {
            "Sequence": len(self.events) + 1,
            "RequestId": record["RequestId"],
            "OtherSystemId": record["OtherSystemId"],
            "FieldName": "Status",
            "OldValue": old,
            "NewValue": new,
            "DateModified": stamp,
        }
        self.events.append(event)
        self.history.setdefault(record["RequestId"], []).append(event)
        return event

    def _add_file(
        self,
        record: dict[str, Any],
        name: str,
        content_type: str,
        body: bytes,
        comments: str | None = None,
    ) -> dict[str, Any]:
        file_id, self._next_file_id = self._next_file_id, self._next_file_id + 1
        self.files[file_id] = (content_type, body)
        item = {
            "AttachmentId": file_id,
            "FileName": name,
            "ContentType": content_type,
            "Size": len(body),
            "Comments": comments,
            "Url": f"/__sim__/files/{file_id}",
        }
        record["Attachments"].append(item)
        return item

    def _close(self, record: dict[str, Any]) -> dict[str, Any]:
        rid = record["RequestId"]
        record.update(
            IsClosed=True, ClosedBy="CREW", Resolution=RESOLUTIONS[rid % len(RESOLUTIONS)]
        )
        event = self._set_status(record, "Closed")
        record["DateTimeClosed"] = event["DateModified"]
        for n in (1, 2):
            self._add_file(record, f"closure-{rid}-{n}.jpg", "image/jpeg", FAKE_JPEG)
        return event

    def _cancel(self, record: dict[str, Any], reason: str | None) -> dict[str, Any]:
        record.update(Cancel=True, CancelReason=reason, IsClosed=True)
        event = self._set_status(record, "Canceled")
        record["DateCancelled"] = event["DateModified"]
        return event

    def _record(self, data: dict[str, Any]) -> dict[str, Any]:
        rid, self._next_request_id = self._next_request_id, self._next_request_id + 1
        stamp = self._stamp()
        code = data["ProblemCode"]
        return {
            "RequestId": rid,
            "Status": "New",
            "ProblemCode": code,
            "ProblemSid": _sid(code),
            "Description": data.get("Description") or PROBLEM_CODES.get(code, code),
            "Details": data.get("Details"),
            "Priority": data.get("Priority"),
            "ProbAddress": data.get("Address"),
            "ProbCity": data.get("City"),
            "ProbZip": data.get("Zip"),
            "SRX": data.get("X"),
            "SRY": data.get("Y"),
            "DateTimeInit": stamp,
            "DateTimeModified": stamp,
            "DateTimeClosed": None,
            "IsClosed": False,
            "Cancel": False,
            "CancelReason": None,
            "ClosedBy": None,
            "Resolution": None,
            "OtherSystemId": data["OtherSystemId"],
            "InitiatedByApp": data.get("InitiatedByApp"),
            "Attachments": [],
        }

    # -- department methods -------------------------------------------------------

    async def authenticate(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        login, password = data.get("LoginName"), data.get("Password")
        if login not in self.credentials or not secrets.compare_digest(
            str(password or ""), self.credentials[login]
        ):
            return envelope(status=3, message="InvalidCredentials")
        token = secrets.token_urlsafe(24)
        now = time.time()
        self.tokens[token] = (now, now + self.token_ttl_seconds)
        expires = self.local_now() + timedelta(seconds=self.token_ttl_seconds)
        return envelope({"Token": token, "Expires": expires.isoformat(timespec="seconds")})

    async def create(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        reference = data.get("OtherSystemId")
        if reference:
            self.create_calls[str(reference)] += 1
        missing = [f for f in ("ProblemCode", "OtherSystemId") if not data.get(f)]
        if missing:
            return error(ERR_REQUIRED, f"Required fields missing: {', '.join(missing)}")
        if data["ProblemCode"] not in self.problem_codes:
            return error(ERR_INVALID_FIELD, "ProblemCode is not a valid problem code")
        with self.lock:
            record = self._keep(self._record(data))
            self._event(record, None, "New", record["DateTimeInit"])
            if data.get("Comments"):
                self._comment(record["RequestId"], str(data["Comments"]))
        return envelope(_public(record))

    async def by_other_system_id(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        reference = data.get("OtherSystemId")
        if not reference:
            return error(ERR_REQUIRED, "Required fields missing: OtherSystemId")
        hits = [self.records[i] for i in self.by_reference.get(reference, ()) if i in self.records]
        return envelope(_public(hits[0]) if hits else None)  # the oldest, if duplicated

    async def by_id(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        record = self.records.get(_int(data.get("RequestId")))
        if record is None:
            return error(ERR_INVALID_ID, "RequestId is not valid")
        return envelope(_public(record))

    async def by_ids(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        ids = [_int(i) for i in data.get("RequestIds") or []]
        return envelope([_public(self.records[i]) for i in ids if i in self.records])

    async def search(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        try:
            begin = _local(data.get("DateModifiedBegin"), self.zone)
            end = _local(data.get("DateModifiedEnd"), self.zone)
        except ValueError:
            return error(ERR_INVALID_FIELD, "DateModifiedBegin/End must be ISO dates")
        statuses, reference = data.get("Status"), data.get("OtherSystemId")
        hits = []
        with self.lock:  # an index hit is checked below against the record as it is now
            changed = [] if begin is None else self.index.changed(begin, end)
            candidates = list(self.records) if begin is None else sorted({k for _, k in changed})
        for rid in candidates:
            record = self.records.get(rid)
            if record is None:
                continue
            modified = datetime.fromisoformat(record["DateTimeModified"])
            if (begin and modified < begin) or (end and modified > end):
                continue
            if (statuses and record["Status"] not in statuses) or (
                reference and record["OtherSystemId"] != reference
            ):
                continue
            hits.append(rid)
        return envelope(hits)

    async def add_comments(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        rid = _int(data.get("RequestId"))
        if rid not in self.records:
            return error(ERR_INVALID_ID, "RequestId is not valid")
        if not data.get("Comments"):
            return error(ERR_REQUIRED, "Required fields missing: Comments")
        with self.lock:
            return envelope(self._comment(rid, str(data["Comments"])))

    def _comment(self, rid: int, text: str) -> dict[str, Any]:
        items = self.comments.setdefault(rid, [])
        item = {
            "CommentId": len(items) + 1,
            "RequestId": rid,
            "Comments": text,
            "DateCreated": self._stamp(),
        }
        items.append(item)
        return item

    async def cancel(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        return self._finish_many(
            data, "Canceled", ERR_CANT_CANCEL, lambda r: self._cancel(r, data.get("CancelReason"))
        )

    async def close(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        return self._finish_many(data, "Closed", ERR_CANT_CLOSE, self._close)

    def _finish_many(
        self,
        data: dict[str, Any],
        target: str,
        refusal: tuple[int, str],
        apply: Callable[[dict[str, Any]], Any],
    ) -> dict[str, Any]:
        ids = [_int(i) for i in data.get("RequestIds") or []]
        if not ids:
            return error(ERR_REQUIRED, "Required fields missing: RequestIds")
        with self.lock:
            records = [self.records.get(i) for i in ids]
            if any(r is None for r in records):
                return error(ERR_INVALID_ID, "RequestId is not valid")
            if any(r["Status"] in FINAL_STATUSES for r in records):
                return error(refusal, f"Request cannot be {target.lower()} in its status")
            for record in records:
                apply(record)
        return envelope([_public(r) for r in records])

    async def audit_log(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        rid = _int(data.get("RequestId"))
        if rid not in self.records:
            return error(ERR_INVALID_ID, "RequestId is not valid")
        return envelope(list(self.history.get(rid, [])))

    async def changes(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        since, limit = max(0, _int(data.get("Since", 0))), _int(data.get("Limit", 500))
        return envelope(self.events[since : since + limit])  # Sequence n sits at index n-1

    async def problems(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        return envelope(
            [
                {"ProblemCode": c, "ProblemSid": _sid(c), "Description": PROBLEM_CODES.get(c, c)}
                for c in sorted(self.problem_codes)
            ]
        )

    async def statuses(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        return envelope(
            [
                {"Code": c, "CodeType": "REQUESTSTATUS", "Description": c, "IsActive": True}
                for c in STATUS_CODES
            ]
        )

    async def add_attachment(self, data: dict[str, Any], form: Any) -> dict[str, Any]:
        rid = _int(data.get("RequestId"))
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return error(ERR_REQUIRED, "Required fields missing: file")
        if rid not in self.records:
            return error(ERR_INVALID_ID, "RequestId is not valid")
        body = await upload.read()
        with self.lock:
            item = self._add_file(
                self.records[rid],
                upload.filename or "upload.bin",
                upload.content_type or "application/octet-stream",
                body,
                data.get("Comments"),
            )
        return envelope(item)

    # -- HTTP plumbing ------------------------------------------------------------

    def _token_ok(self, token: Any) -> bool:
        times = self.tokens.get(token) if isinstance(token, str) else None
        return times is not None and times[1] > time.time()

    def _faults_for(self, op: Operation, token: Any) -> frozenset[Fault]:
        times = self.tokens.get(token) if isinstance(token, str) else None
        if times is None or time.time() - times[0] < self.token_expiry_grace_seconds:
            return op.faults - {Fault.TOKEN_EXPIRY}
        return op.faults

    async def _call(self, request: Request, op: Operation) -> Response:
        form = await request.form()
        token = form.get("token")
        fault, early = await self.begin(self._faults_for(op, token))
        if early is not None:
            return early
        try:
            data = json.loads(form.get("data") or "{}")  # type: ignore[arg-type]
            if not isinstance(data, dict):
                raise ValueError
        except ValueError:
            return JSONResponse(error(ERR_INVALID_FIELD, "data is not a JSON object"))
        if op.auth:
            if fault is Fault.TOKEN_EXPIRY:
                self.tokens.pop(token, None)  # type: ignore[arg-type]  # lapsed early
            if not self._token_ok(token):
                return JSONResponse(envelope(status=2, message="Unauthorized"))
        answer = await op.handler(data, form)
        return await self.finish(fault, JSONResponse(answer))

    def _route(self, path: str, op: Operation) -> Route:
        async def endpoint(request: Request) -> Response:
            return await self._call(request, op)

        return Route(path, endpoint, methods=["POST", "GET"])

    async def _file(self, request: Request) -> Response:
        found = self.files.get(_int(request.path_params["file_id"]))
        if found is None:
            return Response(status_code=404)
        return Response(found[1], media_type=found[0])

    def api_routes(self) -> list[BaseRoute]:
        no_token = ALL_FAULTS - {Fault.TOKEN_EXPIRY}
        sr = "/Services/Ams/ServiceRequest/"
        ops: dict[str, Operation] = {
            "/Services/General/Authentication/Authenticate": Operation(
                self.authenticate, auth=False, faults=no_token
            ),
            sr + "Create": Operation(self.create),
            sr + "ById": Operation(self.by_id),
            sr + "ByIds": Operation(self.by_ids),
            sr + "ByOtherSystemId": Operation(self.by_other_system_id),
            sr + "Search": Operation(self.search),
            sr + "AddComments": Operation(self.add_comments),
            sr + "Cancel": Operation(self.cancel),
            sr + "Close": Operation(self.close),
            sr + "AuditLog": Operation(self.audit_log),
            sr + "Changes": Operation(self.changes),
            sr + "Problems": Operation(self.problems),
            sr + "Statuses": Operation(self.statuses),
            "/Services/AMS/Attachments/AddRequestAttachment": Operation(self.add_attachment),
        }
        routes: list[BaseRoute] = [self._route(path, op) for path, op in ops.items()]
        routes.append(Route("/__sim__/files/{file_id}", self._file, methods=["GET"]))
        return routes

    # -- admin --------------------------------------------------------------------

    def advance(
        self,
        count: int,
        *,
        close: bool = False,
        request_ids: list[int] | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """Crews work `count` open requests (oldest first, or `request_ids`): one step along
        New → Dispatch → Inspect → Closed, straight to Closed with `close`, or to `status`."""
        if status is not None and status not in STATUS_CODES:
            raise ValueError(f"unknown status {status!r}")
        with self.lock:
            pool = (
                (self.records[_int(i)] for i in request_ids if _int(i) in self.records)
                if request_ids
                else (self.records[i] for i in self.index.open if i in self.records)
            )
            still_open = (r for r in pool if r["Status"] not in FINAL_STATUSES)
            open_records = list(itertools.islice(still_open, max(0, count)))
            return [self._step(r, close=close, status=status) for r in open_records]

    def _step(self, record: dict[str, Any], *, close: bool, status: str | None) -> dict[str, Any]:
        target = status or ("Closed" if close else NEXT_STATUS.get(record["Status"], "Dispatch"))
        if target == "Closed":
            event = self._close(record)
        elif target == "Canceled":
            event = self._cancel(record, "Canceled by department")
        else:
            event = self._set_status(record, target)
        return {
            **event,
            "Resolution": record["Resolution"],
            "Photos": [a["Url"] for a in record["Attachments"]] if target == "Closed" else [],
        }

    def _keep(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store a record and index its hub reference (callers hold the lock)."""
        self.records[record["RequestId"]] = record
        self.by_reference.setdefault(record["OtherSystemId"], []).append(record["RequestId"])
        self._indexed(record)
        return record

    def rewrite(self, request_id: int, **fields: Any) -> dict[str, Any]:
        """Edit a record's fields in place, as the department's own staff or tablets would
        (a hand-typed DateTimeModified, a status set outside the workflow), keeping the
        simulator's indexes right. Tests edit records through this, never directly."""
        with self.lock:
            record = self.records[_int(request_id)]
            record.update(fields)
            self._indexed(record)
            return record

    def _indexed(self, record: dict[str, Any]) -> None:
        """Index a record's new modification time and open/final state (callers hold the
        lock)."""
        self.index.note(
            record["RequestId"],
            datetime.fromisoformat(record["DateTimeModified"]),
            is_open=record["Status"] not in FINAL_STATUSES,
        )

    # -- drift for reconciliation tests (simulator-only) ------------------------------

    def lose(self, request_id: int) -> bool:
        """The department loses a record (restored from an old backup, deleted by hand)."""
        with self.lock:
            return self.records.pop(_int(request_id), None) is not None

    def add_record(
        self, reference: str, *, problem_code: str = "POTHOLE", status: str = "New"
    ) -> dict[str, Any]:
        """A record carrying a hub reference that the hub never heard back about."""
        with self.lock:
            record = self._keep(
                self._record({"ProblemCode": problem_code, "OtherSystemId": reference})
            )
            self._event(record, None, "New", record["DateTimeInit"])
            if status != "New":
                self._step(record, close=False, status=status)
            return _public(record)

    def seed(self, rows: Iterable[tuple[str, str]]) -> list[int]:
        """Bulk-load (reference, status) records in-process (benchmarks): no HTTP, no
        events, slim records. Returns the RequestIds in order."""
        stamp = self._stamp()
        ids = []
        with self.lock:
            for reference, status in rows:
                rid, self._next_request_id = self._next_request_id, self._next_request_id + 1
                self._keep(
                    {
                        "RequestId": rid,
                        "Status": status,
                        "OtherSystemId": reference,
                        "DateTimeInit": stamp,
                        "DateTimeModified": stamp,
                        "Attachments": [],
                    }
                )
                ids.append(rid)
        return ids

    async def _lose_route(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        return JSONResponse({"lost": self.lose(body.get("RequestId"))})

    async def _add_record_route(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        if not body.get("OtherSystemId"):
            return JSONResponse({"error": "OtherSystemId is required"}, status_code=422)
        record = self.add_record(str(body["OtherSystemId"]), status=body.get("Status", "New"))
        return JSONResponse(record)

    def admin_routes(self) -> list[BaseRoute]:
        return [
            *super().admin_routes(),
            Route("/__sim__/lose", self._lose_route, methods=["POST"]),
            Route("/__sim__/records", self._add_record_route, methods=["POST"]),
        ]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            records = [
                {
                    **_public(r),
                    "create_calls": self.create_calls[r["OtherSystemId"]],
                    "comments": list(self.comments.get(rid, [])),
                    "events": list(self.history.get(rid, [])),
                }
                for rid, r in self.records.items()
            ]
            per_reference = Counter(r["OtherSystemId"] for r in self.records.values())
            return {
                "department": self.name,
                "records": records,
                "create_calls": dict(self.create_calls),
                "duplicates": {k: n for k, n in per_reference.items() if n > 1},
                "events": len(self.events),
            }

    def error_envelope(self) -> Response:
        return JSONResponse(error(ERR_UNKNOWN, "Transaction deadlocked; try again"))


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "Attachments": list(record["Attachments"])}


def _sid(code: str) -> int:
    return sum(map(ord, code)) % 9000 + 1000


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _local(value: Any, zone: ZoneInfo) -> datetime | None:
    """A filter date as naive local time, like the records (aware input is converted)."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is None else parsed.astimezone(zone).replace(tzinfo=None)


def main(port: int, host: str = "127.0.0.1", faults: str = "none") -> None:
    """Standalone simulator (``hub simulate publicworks --port N``); blocks serving.

    Log in with ``LoginName`` ``hub`` and ``Password`` ``hub-sim-password``.
    """
    serve_forever(PublicWorksSimulator(faults=faults), host=host, port=port)
