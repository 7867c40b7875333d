"""POST /requests: the form a CRM sends, validated against the service definition.

Every problem is collected, so one 400 lists them all. Idempotency (GeoReport v2 has
none, so we add it; see docs/api.md):

* `source_system` + `source_id` form fields: the CRM's own request id. The hub id derives
  from them, so the same CRM request (also via `hub import`) is always the same case.
* `Idempotency-Key` header: scoped to the API key that sent it.
* `attribute[fixmystreet_id]`: FixMyStreet resends a report it is unsure about.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from hub.api.errors import Open311Error, bad_request, not_found
from hub.mapping import ServiceAttribute, ServiceDefinition
from hub.model import Case, Requester, new_hub_id

MAX_DESCRIPTION = 4000  # GeoReport v2: description up to 4,000 characters
MAX_FIELD = 2000
MAX_SOURCE_SYSTEM = 64
MAX_SOURCE_ID = 128
REQUESTER_FIELDS = ("email", "first_name", "last_name", "phone", "device_id", "account_id")


class ServiceRequestForm(BaseModel):
    """The validated form, ready to become a Case."""

    model_config = ConfigDict(frozen=True)

    service: ServiceDefinition
    lat: float | None = None
    long: float | None = None
    address_string: str | None = None
    address_id: str | None = None
    description: str | None = None
    media_url: str | None = None
    attributes: dict[str, Any] = {}
    requester: Requester | None = None
    source_system: str | None = None
    source_id: str | None = None

    def to_case(self) -> Case:
        case = Case(
            source_system=self.source_system,
            source_id=self.source_id,
            service_code=self.service.service_code,
            service_name=self.service.service_name,
            description=self.description,
            lat=self.lat,
            long=self.long,
            address_string=self.address_string,
            address_id=self.address_id,
            media_url=self.media_url,
            attributes=self.attributes,
            requester=self.requester,
        )
        # The id intake gives it (from the source and the request's time), so the token
        # stored with the case is the one derived from its id.
        case.hub_id = new_hub_id(self.source_system, self.source_id, case.requested_datetime)
        return case


def token_for(hub_id: str) -> str:
    """The request's token: derived from the hub id, so a replay returns the same one."""
    return hashlib.sha256(f"open311-token\x1f{hub_id}".encode()).hexdigest()[:32]


def form_fields(items: Iterable[tuple[str, Any]]) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for name, value in items:
        if isinstance(value, str):  # an uploaded file is not a GeoReport field: ignored
            fields.setdefault(name, []).append(value)
    return fields


def first_field(fields: dict[str, list[str]], name: str) -> str | None:
    """The field's value (the last non-empty one); empty means absent ("optional" in
    GeoReport v2)."""
    for value in reversed(fields.get(name, ())):
        value = value.strip()
        if value:
            return value
    return None


_one = first_field


def parse_form(
    items: Iterable[tuple[str, Any]],
    catalogue: dict[str, ServiceDefinition],
    *,
    idempotency_key: str | None,
    key_name: str,
) -> ServiceRequestForm:
    return parse_fields(
        form_fields(items), catalogue, idempotency_key=idempotency_key, key_name=key_name
    )


def parse_fields(
    fields: dict[str, list[str]],
    catalogue: dict[str, ServiceDefinition],
    *,
    idempotency_key: str | None,
    key_name: str,
) -> ServiceRequestForm:
    problems: list[str] = []
    code = _one(fields, "service_code")
    if code is None:
        raise bad_request("service_code is required")
    service = catalogue.get(code)
    if service is None:
        raise not_found(f"service_code {code!r} not found")
    lat, long = _location(fields, problems)
    texts = {name: _one(fields, name) for name in ("address_string", "address_id", "media_url")}
    if lat is None and not texts["address_string"] and not texts["address_id"]:
        problems.append("a location is required: lat and long, address_string or address_id")
    description = _one(fields, "description")
    if description and len(description) > MAX_DESCRIPTION:
        problems.append(f"description is longer than {MAX_DESCRIPTION} characters")
    for name, value in texts.items():
        if value and len(value) > MAX_FIELD:
            problems.append(f"{name} is longer than {MAX_FIELD} characters")
    media_url = texts["media_url"]
    if media_url and not media_url.lower().startswith(("http://", "https://")):
        problems.append("media_url must be an http(s) URL")
    attributes = _attributes(fields, service, problems)
    source = _source(fields, attributes, idempotency_key, key_name, problems)
    requester = _requester(fields, problems)
    if problems:
        raise Open311Error(400, *problems)
    return ServiceRequestForm(
        service=service,
        lat=lat,
        long=long,
        address_string=texts["address_string"],
        address_id=texts["address_id"],
        description=description,
        media_url=media_url,
        attributes=attributes,
        requester=requester,
        source_system=source[0],
        source_id=source[1],
    )


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _location(fields: dict[str, list[str]], problems: list[str]) -> tuple[float | None, ...]:
    lat_text, long_text = _one(fields, "lat"), _one(fields, "long")
    if lat_text is None and long_text is None:
        return None, None
    if lat_text is None or long_text is None:
        problems.append("lat and long must be given together")
        return None, None
    lat, long = _number(lat_text), _number(long_text)
    if lat is None or not -90 <= lat <= 90:
        problems.append(f"lat {lat_text!r} is not a latitude (-90 to 90)")
    if long is None or not -180 <= long <= 180:
        problems.append(f"long {long_text!r} is not a longitude (-180 to 180)")
    if lat is None or long is None or not (-90 <= lat <= 90 and -180 <= long <= 180):
        return None, None
    return lat, long


def _attribute_values(fields: dict[str, list[str]]) -> dict[str, list[str]]:
    """attribute[CODE]=v and attribute[CODE][]=v1&attribute[CODE][]=v2 → {CODE: [...]}."""
    values: dict[str, list[str]] = {}
    for name, given in fields.items():
        if not (name.startswith("attribute[") and name.endswith("]")):
            continue
        code = name[len("attribute[") : -1]
        code = code[:-2] if code.endswith("][") else code
        if code and "[" not in code and "]" not in code:
            values.setdefault(code, []).extend(v.strip() for v in given if v.strip())
    return values


def _attributes(
    fields: dict[str, list[str]], service: ServiceDefinition, problems: list[str]
) -> dict[str, Any]:
    given = _attribute_values(fields)
    attributes: dict[str, Any] = {}
    for attr in service.attributes:
        values = given.pop(attr.code, [])
        if not attr.variable:
            continue  # informational (e.g. set by GIS enrichment): never from the client
        if not values:
            if attr.required:
                problems.append(f"attribute[{attr.code}] is required")
            continue
        value = _attribute_value(attr, values, problems)
        if value is not None:
            attributes[attr.code] = value
    # Codes outside the definition are kept as given (FixMyStreet sends server_set ones
    # such as fixmystreet_id); they are not validated because nothing defines them.
    for code, values in given.items():
        if values and len(code) <= 64:
            attributes[code] = values if len(values) > 1 else values[0]
    return attributes


def _attribute_value(attr: ServiceAttribute, values: list[str], problems: list[str]) -> Any:
    name = f"attribute[{attr.code}]"
    keys = {str(v.key) for v in attr.values}
    if attr.datatype == "multivaluelist":
        bad = [v for v in values if v not in keys]
        if bad:
            problems.append(f"{name}: {', '.join(map(repr, bad))} not in {sorted(keys)}")
            return None
        return list(dict.fromkeys(values))
    if len(values) > 1:
        problems.append(f"{name} takes one value, got {len(values)}")
        return None
    value = values[0]
    if attr.datatype == "singlevaluelist":
        if value not in keys:
            problems.append(f"{name}: {value!r} not in {sorted(keys)}")
            return None
        return value
    if attr.datatype == "number":
        number = _number(value)
        if number is None:
            problems.append(f"{name}: {value!r} is not a number")
            return None
        return int(number) if number.is_integer() else number
    if attr.datatype == "datetime":
        parsed = parse_datetime(value)
        if parsed is None:
            problems.append(f"{name}: {value!r} is not a W3C datetime")
            return None
        return parsed.isoformat()
    if len(value) > MAX_FIELD * (2 if attr.datatype == "text" else 1):
        problems.append(f"{name} is too long")
        return None
    return value


def parse_datetime(text: str) -> datetime | None:
    """W3C/ISO 8601 datetime or date; a value without an offset is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(
            text.strip().replace(" ", "+", 1)
            if "T" in text and " " in text.strip()
            else text.strip()
        )
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _source(
    fields: dict[str, list[str]],
    attributes: dict[str, Any],
    idempotency_key: str | None,
    key_name: str,
    problems: list[str],
) -> tuple[str | None, str | None]:
    system, source_id = _one(fields, "source_system"), _one(fields, "source_id")
    if (system is None) != (source_id is None):
        problems.append("source_system and source_id must be given together")
        return None, None
    if system is None and idempotency_key and idempotency_key.strip():
        system, source_id = f"key:{key_name}"[:MAX_SOURCE_SYSTEM], idempotency_key.strip()
    fms = attributes.get("fixmystreet_id")
    if system is None and isinstance(fms, str):
        system, source_id = "fixmystreet", fms
    if system and len(system) > MAX_SOURCE_SYSTEM:
        problems.append(f"source_system is longer than {MAX_SOURCE_SYSTEM} characters")
    if source_id and len(source_id) > MAX_SOURCE_ID:
        problems.append(f"source_id / Idempotency-Key is longer than {MAX_SOURCE_ID} characters")
    return system, source_id


def _requester(fields: dict[str, list[str]], problems: list[str]) -> Requester | None:
    values = {name: _one(fields, name) for name in REQUESTER_FIELDS}
    for name, value in values.items():
        if value and len(value) > 256:
            problems.append(f"{name} is longer than 256 characters")
    if not any(values.values()):
        return None
    return Requester(**values)
