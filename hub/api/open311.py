"""Open311 GeoReport v2 (+ mySociety servicerequestupdates), mounted at /open311/v2/.

The format is the URL suffix (`.json` or `.xml`); every list document is a JSON array.
The hub's case id is the `service_request_id`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hub.api import shapes
from hub.api.auth import ApiKeyChecker
from hub.api.batcher import IntakeBatcher
from hub.api.errors import bad_request, not_found
from hub.api.forms import first_field, form_fields, parse_datetime, parse_fields, token_for
from hub.api.queries import search_cases
from hub.mapping import ServiceDefinition
from hub.model import Case, utcnow
from hub.services.runtime import Hub

PREFIX = "/open311/v2"
FORMATS = ("json", "xml")
DEFAULT_WINDOW = timedelta(days=90)  # GeoReport v2: last 90 days or 1000 requests
MAX_WINDOW = timedelta(days=90)
MAX_REQUESTS = 1000
MAX_FIELDS = 1000  # as Starlette's form parser
URLENCODED = "application/x-www-form-urlencoded"

router = APIRouter(prefix=PREFIX, tags=["Open311 GeoReport v2"])

Fmt = Annotated[str, "json or xml"]
Text = Annotated[str | None, Query()]


@dataclass
class ApiState:
    """What the routes need, built once by create_app."""

    hub: Hub
    keys: ApiKeyChecker
    batcher: IntakeBatcher
    jurisdiction_id: str | None = None
    contact: str = "311 integration hub operator"
    changeset: datetime | None = None

    @property
    def catalogue(self) -> dict[str, ServiceDefinition]:
        return self.hub.mappings.catalogue


def _state(request: Request) -> ApiState:
    return request.app.state.open311


def _fmt(fmt: str) -> str:
    if fmt not in FORMATS:
        raise not_found(f"unknown format {fmt!r}: use .json or .xml")
    return fmt


def _jurisdiction(state: ApiState, given: str | None) -> None:
    if given and state.jurisdiction_id and given.strip() != state.jurisdiction_id:
        raise not_found(f"jurisdiction_id {given!r} not found")


# --------------------------------------------------------------------------- discovery


@router.get("/discovery.{fmt}", summary="Service discovery")
async def discovery(request: Request, fmt: Fmt) -> Response:
    state = _state(request)
    changeset = state.changeset or utcnow()
    url = str(request.base_url).rstrip("/") + PREFIX
    data = {
        "changeset": changeset,
        "contact": state.contact,
        "key_service": "API keys are issued by the hub operator (hub apikey create NAME)",
        "endpoints": [
            {
                "specification": shapes.SPECIFICATION,
                "url": url,
                "changeset": changeset,
                "type": "production",
                "formats": ["text/xml", "application/json"],
            }
        ],
    }
    return shapes.respond(_fmt(fmt), "discovery", data)


# --------------------------------------------------------------------------- services


@router.get("/services.{fmt}", summary="Service list")
async def services(request: Request, fmt: Fmt, jurisdiction_id: Text = None) -> Response:
    state = _state(request)
    _jurisdiction(state, jurisdiction_id)
    items = [shapes.service_item(s) for s in state.catalogue.values()]
    return shapes.respond(_fmt(fmt), "services", items)


@router.get("/services/{service_code}.{fmt}", summary="Service definition")
async def service_definition(
    request: Request, service_code: str, fmt: Fmt, jurisdiction_id: Text = None
) -> Response:
    state = _state(request)
    fmt = _fmt(fmt)
    _jurisdiction(state, jurisdiction_id)
    service = state.catalogue.get(service_code)
    if service is None:
        raise not_found(f"service_code {service_code!r} not found")
    return shapes.respond(fmt, "service_definition", shapes.service_definition(service))


# --------------------------------------------------------------------------- POST requests


# The hot path takes only the Request: no FastAPI parameter solving or python-multipart
# for the usual urlencoded body. The parameters are documented here instead.
_CREATE_OPENAPI = {
    "parameters": [
        {
            "name": "fmt",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "title": "Fmt", "enum": list(FORMATS)},
        },
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "title": "Idempotency-Key"},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["api_key", "service_code"],
                    "properties": {
                        name: {"type": "string"}
                        for name in (
                            "api_key",
                            "jurisdiction_id",
                            "service_code",
                            "lat",
                            "long",
                            "address_string",
                            "address_id",
                            "description",
                            "media_url",
                            "email",
                            "first_name",
                            "last_name",
                            "phone",
                            "device_id",
                            "account_id",
                            "source_system",
                            "source_id",
                        )
                    },
                    "additionalProperties": {"type": "string"},
                    "description": "attribute[CODE]=value; attribute[CODE][]=v repeated for "
                    "a multivaluelist",
                }
            },
            "multipart/form-data": {"schema": {"type": "object"}},
        },
    },
}


@router.post(
    "/requests.{fmt}",
    summary="Create a service request (form-encoded)",
    description="Form fields per GeoReport v2; api_key required. Idempotent with an "
    "`Idempotency-Key` header or `source_system`+`source_id` fields (see docs/api.md).",
    status_code=201,
    openapi_extra=_CREATE_OPENAPI,
)
async def create_request(request: Request) -> Response:
    state = _state(request)
    fmt = _fmt(request.path_params["fmt"])
    fields = form_fields(await _form_items(request))
    key_name = await state.keys.require(first_field(fields, "api_key"))
    _jurisdiction(state, first_field(fields, "jurisdiction_id"))
    parsed = parse_fields(
        fields,
        state.catalogue,
        idempotency_key=request.headers.get("idempotency-key"),
        key_name=key_name,
    )
    case = parsed.to_case()
    result = await state.batcher.submit(case, token_for(case.hub_id))
    stored = result.case
    if not result.created and stored.service_code != case.service_code:
        raise bad_request(
            "this idempotency key / source id was already used for a different service_code"
        )
    item = _post_item(
        stored, parsed.service, parsed.requester.account_id if parsed.requester else None
    )
    return shapes.respond(fmt, "service_requests", [item], 201 if result.created else 200)


async def _form_items(request: Request) -> list[tuple[str, Any]]:
    """The form's fields in order. A urlencoded body is split here (the usual case, and
    what python-multipart would do, with the same latin-1 + percent-UTF-8 decoding);
    multipart bodies go through Starlette."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != URLENCODED:
        form = await request.form()
        return form.multi_items()
    body = await request.body()
    try:
        return parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:  # more than MAX_FIELDS fields
        raise bad_request(f"Too many fields. Maximum number of fields is {MAX_FIELDS}.") from None


def _post_item(case: Case, service: ServiceDefinition, account_id: str | None) -> dict:
    item: dict = {}
    if service.type == "batch":  # batch services answer with a token (GET tokens/{token})
        item["token"] = token_for(case.hub_id)
    elif service.type == "realtime":
        item["service_request_id"] = case.hub_id
    notice = f"expected by {case.sla_due.isoformat(timespec='minutes')}" if case.sla_due else ""
    item["service_notice"] = notice
    item["account_id"] = account_id
    return item


# --------------------------------------------------------------------------- GET requests


def _date(name: str, value: str | None) -> datetime | None:
    if value is None or not value.strip():
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        raise bad_request(f"{name} {value!r} is not a W3C datetime (e.g. 2024-05-01T00:00:00Z)")
    return parsed


def _window(start_date: str | None, end_date: str | None) -> tuple[datetime, datetime]:
    start, end = _date("start_date", start_date), _date("end_date", end_date)
    if start is None and end is None:
        end = utcnow()
    if start is None:
        start = end - DEFAULT_WINDOW  # type: ignore[operator]
    if end is None:
        end = start + DEFAULT_WINDOW
    if end < start:
        raise bad_request("end_date is before start_date")
    if end - start > MAX_WINDOW:
        raise bad_request("the date range may span at most 90 days")
    return start, end


def _comma(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@router.get("/requests.{fmt}", summary="Service requests")
async def list_requests(
    request: Request,
    fmt: Fmt,
    service_request_id: Text = None,
    service_code: Text = None,
    start_date: Text = None,
    end_date: Text = None,
    status: Text = None,
    jurisdiction_id: Text = None,
) -> Response:
    state = _state(request)
    fmt = _fmt(fmt)
    _jurisdiction(state, jurisdiction_id)
    ids = _comma(service_request_id)
    if ids:  # the spec: service_request_id overrides every other filter
        if len(ids) > MAX_REQUESTS:
            raise bad_request(f"at most {MAX_REQUESTS} service_request_id values")
        cases = await run_in_threadpool(_get_many, state.hub, ids)
    else:
        statuses = [s.lower() for s in _comma(status)]
        unknown = sorted(set(statuses) - {"open", "closed"})
        if unknown:
            raise bad_request(f"status must be open or closed, not {', '.join(unknown)}")
        start, end = _window(start_date, end_date)
        cases = await run_in_threadpool(
            _search, state.hub, start, end, _comma(service_code), statuses
        )
    return shapes.respond(fmt, "service_requests", [shapes.request_item(c) for c in cases])


def _get_many(hub: Hub, ids: list[str]) -> list[Case]:
    with hub.read_uow() as uow:
        found = uow.cases.get_many(ids)
    return [found[i] for i in dict.fromkeys(ids) if i in found]


def _search(hub: Hub, start, end, codes: list[str], statuses: list[str]) -> list[Case]:
    with hub.read_uow() as uow:
        assert uow.connection is not None
        return search_cases(
            uow.connection,
            start=start,
            end=end,
            service_codes=codes,
            open311_statuses=statuses,
            limit=MAX_REQUESTS,
        )


def _get(hub: Hub, hub_id: str) -> Case | None:
    with hub.read_uow() as uow:
        return uow.cases.get(hub_id)


def _by_token(hub: Hub, token: str) -> Case | None:
    with hub.read_uow() as uow:
        return uow.cases.get_by_token(token)


@router.get("/requests/{service_request_id}.{fmt}", summary="One service request")
async def get_request(
    request: Request, service_request_id: str, fmt: Fmt, jurisdiction_id: Text = None
) -> Response:
    state = _state(request)
    fmt = _fmt(fmt)
    _jurisdiction(state, jurisdiction_id)
    case = await run_in_threadpool(_get, state.hub, service_request_id)
    if case is None:
        raise not_found(f"service request {service_request_id!r} not found")
    return shapes.respond(fmt, "service_requests", [shapes.request_item(case)])


@router.get("/tokens/{token}.{fmt}", summary="service_request_id from a token")
async def get_token(
    request: Request, token: str, fmt: Fmt, jurisdiction_id: Text = None
) -> Response:
    state = _state(request)
    fmt = _fmt(fmt)
    _jurisdiction(state, jurisdiction_id)
    case = await run_in_threadpool(_by_token, state.hub, token)
    if case is None:
        raise not_found(f"token {token!r} not found")
    item = {"service_request_id": case.hub_id, "token": token}
    return shapes.respond(fmt, "service_requests", [item])


# --------------------------------------------------------------------------- updates


def _updates(hub: Hub, start: datetime, end: datetime):
    with hub.read_uow() as uow:
        return uow.status_updates.between(start, end, limit=MAX_REQUESTS)


@router.get(
    "/servicerequestupdates.{fmt}",
    summary="Status updates (mySociety extension)",
    description="Every canonical status change in [start_date, end_date] (default: the last "
    "90 days), oldest first, at most 1000 per call.",
)
async def service_request_updates(
    request: Request,
    fmt: Fmt,
    start_date: Text = None,
    end_date: Text = None,
    jurisdiction_id: Text = None,
    api_key: Text = None,  # accepted (FixMyStreet sends it) but reads are open
) -> Response:
    state = _state(request)
    fmt = _fmt(fmt)
    _jurisdiction(state, jurisdiction_id)
    start, end = _window(start_date, end_date)
    updates = await run_in_threadpool(_updates, state.hub, start, end)
    items = [shapes.update_item(u) for u in updates]
    return shapes.respond(fmt, "service_request_updates", items)
