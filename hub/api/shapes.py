"""Open311 representations of hub objects (service list, definition, request, update).

Keys and their order follow GeoReport v2 and mySociety's servicerequestupdates, so the
JSON and XML documents match what Open311 clients (FixMyStreet, the open311 gems) parse.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from starlette.responses import Response

from hub.api import xml
from hub.api.errors import JSON_TYPE, XML_TYPE
from hub.mapping import ServiceAttribute, ServiceDefinition
from hub.model import Case, CaseStatus
from hub.store.repository import StatusUpdate

SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"

# Canonical status → mySociety's extended update status (FixMyStreet understands these).
UPDATE_STATUS = {
    CaseStatus.RECEIVED: "open",
    CaseStatus.ROUTED: "open",
    CaseStatus.IN_QUEUE: "action_scheduled",
    CaseStatus.ONSITE: "in_progress",
    CaseStatus.RESOLVED: "fixed",
    CaseStatus.CLOSED: "closed",
    CaseStatus.CANCELLED: "closed",
    CaseStatus.REJECTED: "not_councils_responsibility",
    CaseStatus.REOPENED: "reopen",
}


def service_item(service: ServiceDefinition) -> dict[str, Any]:
    return {
        "service_code": service.service_code,
        "service_name": service.service_name,
        "description": service.description,
        "metadata": service.metadata,
        "type": service.type,
        "keywords": ",".join(service.keywords),
        "group": service.group,
    }


def attribute_item(attribute: ServiceAttribute) -> dict[str, Any]:
    return {
        "variable": attribute.variable,
        "code": attribute.code,
        "datatype": attribute.datatype,
        "required": attribute.required,
        "datatype_description": attribute.datatype_description or "",
        "order": attribute.order,
        "description": attribute.description,
        "values": [{"key": str(v.key), "name": v.name} for v in attribute.values],
    }


def service_definition(service: ServiceDefinition) -> dict[str, Any]:
    ordered = sorted(service.attributes, key=lambda a: a.order)
    return {
        "service_code": service.service_code,
        "attributes": [attribute_item(a) for a in ordered],
    }


def request_item(case: Case) -> dict[str, Any]:
    notes = case.status_notes or (case.closure.text if case.closure else None)
    return {
        "service_request_id": case.hub_id,
        "status": case.status.open311,
        "status_notes": notes,
        "service_name": case.service_name,
        "service_code": case.service_code,
        "description": case.description,
        "agency_responsible": case.department,
        "service_notice": None,
        "requested_datetime": case.requested_datetime,
        "updated_datetime": case.updated_datetime,
        "expected_datetime": case.sla_due,
        "address": case.address_string,
        "address_id": case.address_id,
        "zipcode": case.zipcode,
        "lat": case.lat,
        "long": case.long,
        "media_url": case.media_url,
    }


def update_item(update: StatusUpdate) -> dict[str, Any]:
    try:
        status = UPDATE_STATUS[CaseStatus(update.status)]
    except ValueError:  # a status this version does not know: say open, keep the raw code
        status = "open"
    item: dict[str, Any] = {
        "update_id": str(update.id),
        "service_request_id": update.case_id,
        "status": status,
        "updated_datetime": update.at,
        "description": update.description or "",
        "media_url": update.media_url or "",
    }
    if update.raw_code:
        item["external_status_code"] = update.raw_code
    return item


# --------------------------------------------------------------------------- rendering


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return xml.w3c(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def respond(fmt: str, root: str, data: Any, status: int = 200) -> Response:
    """`data` as JSON (arrays for list documents) or as XML under `root`."""
    if fmt == "xml":
        return Response(xml.render(root, data), status, media_type=XML_TYPE)
    body = json.dumps(_jsonable(data), ensure_ascii=False)
    return Response(body.encode("utf-8"), status, media_type=JSON_TYPE)
