"""Routing, payloads and status translation with the shipped mappings."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from hub.mapping import MappingSet, PayloadError, UnmappedStatus
from hub.model import Attachment, Case, CaseStatus, Priority, Requester


def case(code: str, **kwargs: object) -> Case:
    return Case(service_code=code, **kwargs)


# --------------------------------------------------------------------------- catalogue


def test_catalogue_has_realistic_services(mappings: MappingSet) -> None:
    assert len(mappings.catalogue) >= 15
    bulk = mappings.catalogue["BULKITEM"]
    assert bulk.fee is not None and (bulk.fee.amount_cents, bulk.fee.currency) == (2500, "USD")
    assert bulk.attribute("item_types").datatype == "multivaluelist"
    assert mappings.catalogue["GRAFFITI"].attribute("offensive").values[0].key == "yes"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("Request for Pothole Repair", "POTHOLE"),
        ("STREET LIGHT OUTAGES", "STRLGHT"),
        ("street light condition", "STRLGHT"),
        ("Schedule a Bulk Item Pickup", "BULKITEM"),
        ("  Illegal_Dumping ", "DUMPING"),
        ("Missed Trash Pickup", "MISSEDTR"),
        ("rodent", "RODENT"),
    ],
)
def test_service_for_name_matches_crm_types(mappings: MappingSet, name: str, code: str) -> None:
    service = mappings.service_for_name(name)
    assert service is not None and service.service_code == code


def test_service_for_unknown_name(mappings: MappingSet) -> None:
    assert mappings.service_for_name("Benefit Card Replacement") is None


# --------------------------------------------------------------------------- routing


def test_pothole_routes_to_publicworks(mappings: MappingSet) -> None:
    route = mappings.route(case("POTHOLE"))
    assert route is not None
    assert (route.department, route.work_order_type, route.priority, route.sla_hours) == (
        "publicworks",
        "PH-REPAIR",
        Priority.NORMAL,
        72,
    )
    assert route.team == "Street Maintenance"
    assert "publicworks.yaml routes[0]" in route.reason


def test_when_rule_on_attribute_overrides_team(mappings: MappingSet) -> None:
    route = mappings.route(case("POTHOLE", attributes={"ward": 3}))  # number matches "3"
    assert route is not None
    assert route.team == "District 03: North Dorchester"
    assert "attributes.ward='3'" in route.reason


def test_equally_specific_rules_keep_file_order(mappings: MappingSet) -> None:
    route = mappings.route(case("POTHOLE", attributes={"ward": "3", "size": "Large"}))
    assert route is not None and (route.priority, route.sla_hours) == (Priority.HIGH, 24)


def test_when_list_means_any_of(mappings: MappingSet) -> None:
    route = mappings.route(case("TREEDMG", attributes={"blocking": "sidewalk"}))
    assert route is not None and route.work_order_type == "TREE-EMERG"
    plain = mappings.route(case("TREEDMG", attributes={"blocking": "none"}))
    assert plain is not None and plain.work_order_type == "TREE-DAMAGE"


def test_rule_can_send_to_another_department(mappings: MappingSet) -> None:
    route = mappings.route(case("GRAFFITI", attributes={"surface": "private"}))
    assert route is not None
    assert (route.department, route.team) == ("codeenforcement", "Graffiti Compliance")


def test_every_catalogue_service_routes(mappings: MappingSet) -> None:
    for code in mappings.catalogue:
        route = mappings.route(case(code))
        assert route is not None and route.department in mappings.departments


def test_unknown_service_has_no_route(mappings: MappingSet) -> None:
    assert mappings.route(case("NOPE")) is None


# --------------------------------------------------------------------------- payloads


def routed(mappings: MappingSet, c: Case) -> Case:
    route = mappings.route(c)
    assert route is not None
    c.work_order_type, c.priority, c.team = route.work_order_type, route.priority, route.team
    return c


@pytest.mark.parametrize(
    ("utc", "local"),
    [
        (datetime(2026, 3, 8, 6, 30, tzinfo=UTC), "2026-03-08T01:30:00"),  # EST, -5
        (datetime(2026, 3, 8, 7, 30, tzinfo=UTC), "2026-03-08T03:30:00"),  # EDT, -4
        (datetime(2026, 11, 1, 5, 30, tzinfo=UTC), "2026-11-01T01:30:00"),  # EDT
        (datetime(2026, 11, 1, 6, 30, tzinfo=UTC), "2026-11-01T01:30:00"),  # EST again
    ],
)
def test_payload_dates_in_department_time_across_dst(
    mappings: MappingSet, utc: datetime, local: str
) -> None:
    dept = mappings.departments["publicworks"]
    assert dept.local_timezone == ZoneInfo("America/New_York")
    payload = dept.build_payload(routed(mappings, case("POTHOLE", requested_datetime=utc)))
    assert payload["DateTimeInit"] == local


def test_publicworks_payload(mappings: MappingSet) -> None:
    c = routed(
        mappings,
        case(
            "STRLGHT",
            hub_id="hub-1",
            address_string="1 City Hall Sq",
            lat=42.36,
            long=-71.06,
            attributes={"condition": "knocked_down", "pole_id": "40213"},
        ),
    )
    payload = mappings.departments["publicworks"].build_payload(c)
    assert payload["ProblemCode"] == "STREETLIGHT"  # lookup on the routed work order type
    assert payload["Priority"] == "1"  # emergency
    assert payload["WKID"] == 4326 and payload["X"] == -71.06
    assert payload["OtherSystemId"] == "hub-1"
    assert payload["CustomFieldValues"] == {"PoleId": "40213"}  # dotted name nests
    assert payload["Description"] == "311 service request"  # default
    assert "Zip" not in payload and "CallerEmail" not in payload  # empty: left out


def test_accela_payload_nests_and_maps_requester(mappings: MappingSet) -> None:
    c = routed(
        mappings,
        case(
            "PROPMAINT",
            address_string="12 Elm St",
            attributes={"hazard": "yes"},
            requester=Requester(first_name="Ana", email="ana@example.org"),
            requested_datetime=datetime(2026, 7, 1, 16, 0, tzinfo=UTC),
        ),
    )
    payload = mappings.departments["codeenforcement"].build_payload(c)
    assert payload["RecordType"] == "Enforcement/Property Maintenance/Unsafe Structure/NA"
    assert payload["Priority"] == "Urgent"
    assert payload["Contact"] == {"FirstName": "Ana", "Email": "ana@example.org"}
    assert payload["Address"]["StreetAddress"] == "12 Elm St"
    assert payload["ReportedDate"] == "2026-07-01T12:00:00"
    assert payload["ExternalReference"] == c.hub_id


def test_sanitation_row_and_layout(mappings: MappingSet) -> None:
    dept = mappings.departments["sanitation"]
    c = routed(
        mappings,
        case(
            "BULKITEM",
            address_string="5 Oak Ave",
            attributes={"item_types": ["mattress"]},
            evidence=[Attachment(url="https://example.org/a.jpg")],
        ),
    )
    payload = dept.build_payload(c)
    layout = dept.file_layout.work_orders
    assert set(payload) <= set(layout.columns)
    assert (payload["ServiceType"], payload["Priority"], payload["Items"]) == (
        "BK",
        "L",
        ["mattress"],
    )
    assert (layout.encoding, layout.delimiter, layout.date_format) == (
        "windows-1252",
        ",",
        "%m/%d/%Y %H:%M",
    )
    assert dept.file_layout.status_updates.roles["status"] == "Status"
    assert dept.extra["status_window_minutes"] == 90
    assert dept.raw["file_layout"]["work_orders"]["quoting"] == "all"


def test_missing_required_field_raises(mappings: MappingSet) -> None:
    c = routed(mappings, case("MISSEDTR"))  # no address
    with pytest.raises(PayloadError) as info:
        mappings.departments["sanitation"].build_payload(c)
    assert info.value.field == "Address"


# --------------------------------------------------------------------------- statuses


def test_status_in_round_trip(mappings: MappingSet) -> None:
    dept = mappings.departments["publicworks"]
    closed = dept.map_status_in("Closed")
    assert closed is not None
    assert (closed.status, closed.closure_reason, closed.raw_code) == (
        CaseStatus.RESOLVED,
        "completed",
        "Closed",
    )
    assert dept.map_status_in("Dispatch").status is CaseStatus.ONSITE
    assert dept.map_status_in(" on hold ").status is CaseStatus.IN_QUEUE  # forgiving match
    assert dept.status_out("cancelled") == "Canceled"
    assert dept.map_status_in(dept.status_out("cancelled")).status is CaseStatus.CANCELLED
    assert dept.status_out(CaseStatus.REOPENED) == "New"
    assert dept.status_out("onsite") is None


def test_ignored_status_returns_none(mappings: MappingSet) -> None:
    assert mappings.departments["publicworks"].map_status_in("Web") is None
    assert mappings.departments["sanitation"].map_status_in("ACK") is None


def test_unknown_status_raises(mappings: MappingSet) -> None:
    with pytest.raises(UnmappedStatus) as info:
        mappings.departments["codeenforcement"].map_status_in("Closed - Sold")
    assert (info.value.department, info.value.code) == ("codeenforcement", "Closed - Sold")


def test_declared_statuses(mappings: MappingSet) -> None:
    stl = {
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
    }
    assert mappings.departments["publicworks"].statuses == stl
