"""build_payload prepares each mapping's fields once: the payloads must be what evaluating
the field specs directly gives, for every kind of field, and follow a replaced model."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.mapping import DepartmentMapping, MappingSet, PayloadError
from hub.mapping.checks import is_datetime_path
from hub.mapping.schema import DepartmentFile
from hub.model import Attachment, Case, Closure, Priority, Requester
from hub.testing.generator import CaseGenerator


def spec_value(dept: DepartmentMapping, case: Case, name: str, spec) -> Any:
    """One field straight from its spec (the documented semantics, nothing prepared)."""
    if spec.lookup is not None:
        key = at(case, spec.lookup.path)
        table = dept.model.lookups[spec.lookup.table]
        value = None if key is None else table.get(text(key))
    elif spec.path is not None:
        value = converted(dept, at(case, spec.path), spec)
    else:
        value = spec.const
    if value is None or value == "" or value == []:
        value = spec.default
    if value is None and spec.required:
        raise PayloadError(
            name, f"required field has no value (from {spec.source_path or 'const'})"
        )
    return value


def at(case: Case, path: str) -> Any:
    head, _, rest = path.partition(".")
    value = getattr(case, head, None)
    if not rest or value is None:
        return value
    return value.get(rest) if isinstance(value, dict) else getattr(value, rest, None)


def text(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def converted(dept: DepartmentMapping, value: Any, spec) -> Any:
    if isinstance(value, str) and spec.format and is_datetime_path(spec.path):
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
        value = value.astimezone(dept.local_timezone if spec.timezone == "department" else UTC)
        return value.strftime(spec.format) if spec.format else value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return [getattr(item, "url", item) for item in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    return value


def reference(dept: DepartmentMapping, case: Case) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for name, spec in dept.model.fields.items():
        value = spec_value(dept, case, name, spec)
        if value is not None:
            *parents, leaf = name.split(".")
            node = payload
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return payload


def outcome(build, case: Case) -> Any:
    try:
        return build(case)
    except PayloadError as error:
        return ("PayloadError", error.field, str(error))


def test_shipped_mappings_give_the_spec_payloads(mappings: MappingSet) -> None:
    checked = 0
    for case in CaseGenerator(mappings, seed=5).generate(600):
        route = mappings.route(case)
        if route is not None:
            case.work_order_type, case.team = route.work_order_type, route.team
            case.priority = route.priority or case.priority
        for dept in mappings.departments.values():
            mine = outcome(dept.build_payload, case)
            # repr: the same values of the same types (a StrEnum equals its value)
            assert repr(mine) == repr(outcome(lambda c, d=dept: reference(d, c), case))
            assert type(mine) is dict or mine[0] == "PayloadError"
            checked += 1
    assert checked == 600 * len(mappings.departments)


FIELDS = {
    "Kind": {"const": "pothole"},
    "Blank": {"path": "zipcode", "default": "none given"},
    "Prio": {"lookup": {"table": "prio", "path": "priority"}, "default": "?"},
    "Unlisted": {"lookup": {"table": "prio", "path": "attributes.missing"}},
    "Flag": {"lookup": {"table": "yesno", "path": "attributes.flag"}},
    "Level": {"path": "priority"},  # an enum: its value
    "Photos": {"path": "evidence"},  # a list of attachments: their URLs
    "Closure": {"path": "closure"},  # a model: dumped
    "Seen.Local": {"path": "attributes.seen", "format": "%d/%m/%Y %H:%M", "timezone": "department"},
    "Seen.Raw": {"path": "attributes.seen"},  # no format: the text as it is
    "Bad": {"path": "attributes.bad_date", "format": "%Y"},  # not a date: kept as text
    "Due.Utc": {"path": "sla_due"},
    "Who": {"path": "requester"},
    "Lat": {"path": "lat"},
    "Ref": {"path": "hub_id", "required": True},
}


def custom(fields: dict[str, Any], timezone: str = "Europe/Paris") -> DepartmentMapping:
    model = DepartmentFile.model_validate(
        {
            "department": "custom",
            "adapter": "custom",
            "timezone": timezone,
            "fields": fields,
            "lookups": {"prio": {"high": "1", "low": "4"}, "yesno": {"true": "Y", "false": "N"}},
            "status_in": {"New": "in_queue"},
        }
    )
    return DepartmentMapping("custom", "custom", timezone, Path("custom.yaml"), model)


CASES = [
    Case(service_code="POTHOLE"),
    Case(
        service_code="POTHOLE",
        zipcode="",
        priority=Priority.HIGH,
        lat=42.5,
        attributes={"seen": "2026-07-01T10:15:00", "bad_date": "last week", "flag": False},
        evidence=[Attachment(url="https://x.invalid/a.jpg")],
        closure=Closure(code="fixed"),
        sla_due=datetime(2026, 7, 2, 8, 0, tzinfo=ZoneInfo("America/New_York")),
        requester=Requester(first_name="Ada"),
    ),
    Case(service_code="POTHOLE", priority=Priority.LOW, attributes={"seen": 5, "flag": True}),
]


@pytest.mark.parametrize("case", CASES)
def test_every_kind_of_field_gives_the_spec_value(case: Case) -> None:
    dept = custom(FIELDS)
    assert repr(dept.build_payload(case)) == repr(reference(dept, case))
    assert repr(dept.build_payload(case)) == repr(reference(dept, case))  # prepared reused


def test_the_kinds_of_field_as_sent() -> None:
    payload = custom(FIELDS).build_payload(CASES[1])
    assert payload["Kind"] == "pothole" and payload["Blank"] == "none given"
    assert (payload["Prio"], payload["Level"], payload["Flag"]) == ("1", "high", "N")
    assert "Unlisted" not in payload and payload["Photos"] == ["https://x.invalid/a.jpg"]
    assert payload["Closure"] == {"code": "fixed"} and payload["Who"] == {"first_name": "Ada"}
    assert payload["Seen"] == {"Local": "01/07/2026 12:15", "Raw": "2026-07-01T10:15:00"}
    assert payload["Bad"] == "last week" and payload["Due"] == {"Utc": "2026-07-02T12:00:00+00:00"}


def test_a_missing_required_field_still_raises() -> None:
    dept = custom({"Zip": {"path": "zipcode", "required": True}})
    with pytest.raises(PayloadError) as info:
        dept.build_payload(Case(service_code="POTHOLE"))
    assert info.value.field == "Zip"


def test_a_replaced_model_or_zone_is_followed() -> None:
    dept = custom({"A": {"path": "hub_id"}})
    case = Case(
        service_code="POTHOLE", hub_id="h-1", requested_datetime=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert dept.build_payload(case) == {"A": "h-1"}
    when = {"When": {"path": "requested_datetime", "format": "%H:%M", "timezone": "department"}}
    dept.model = custom(when).model
    assert dept.build_payload(case) == {"When": "01:00"}  # Paris, winter
    dept.local_timezone = ZoneInfo("Asia/Tokyo")
    assert dept.build_payload(case) == {"When": "09:00"}
