"""CRM export import: every real format read in place, plus hand-written bad rows."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.imports import ExportFormat, ImportedRow, UnknownFormat, detect_format, read_export
from hub.mapping import MappingSet, load_mappings
from hub.model import new_hub_id
from hub.testing.generator import find_realworld_dir


@pytest.fixture(scope="module")
def catalogue() -> MappingSet:
    return load_mappings()


@pytest.fixture(scope="module")
def realworld() -> Path:
    # shared/ always sits next to the repo: a missing directory is a failure, not a skip.
    found = find_realworld_dir(Path(__file__).parent)
    assert found is not None and (found / "311_records").is_dir(), (
        f"real 311 records not found (HUB_REALWORLD_DIR or shared/realworld): {found}"
    )
    return found


def _rows(realworld: Path, relative: str, catalogue: MappingSet) -> list[ImportedRow]:
    return list(read_export(realworld / relative, catalogue=catalogue))


# file, format, rows, imported, problem rows
FILES = [
    ("311_records/nyc/nyc311_2014-2019_export.csv", ExportFormat.NYC_CSV, 1000, 316, 684),
    ("311_records/nyc/nyc311_2016_brooklyn_cb06.csv", ExportFormat.NYC_CSV, 117, 94, 23),
    ("311_records/nyc/nyc311_2012_socrata_api.json", ExportFormat.NYC_SOCRATA, 1000, 268, 732),
    ("311_records/nyc/nyc311_2024_socrata_api.json", ExportFormat.NYC_SOCRATA, 1000, 424, 576),
    ("311_records/boston/boston311_2025_open_cases.csv", ExportFormat.BOSTON_CSV, 2424, 2420, 4),
    ("311_records/boston/boston311-100.csv", ExportFormat.BOSTON_CSV, 100, 58, 42),
    (
        "311_records/sf/sf311_open311_2011_django_fixture.json",
        ExportFormat.SF_FIXTURE,
        500,
        318,
        182,
    ),
    ("open311/bloomington/bloomington_requests.json", ExportFormat.OPEN311_JSON, 21, 9, 12),
    ("open311/chicago/chicago_requests.json", ExportFormat.OPEN311_JSON, 2, 2, 0),
]


@pytest.mark.parametrize(("relative", "kind", "total", "imported", "problems"), FILES)
def test_real_export_counts(
    realworld: Path,
    catalogue: MappingSet,
    relative: str,
    kind: ExportFormat,
    total: int,
    imported: int,
    problems: int,
) -> None:
    assert detect_format(realworld / relative) is kind
    rows = _rows(realworld, relative, catalogue)
    assert len(rows) == total
    assert sum(r.ok for r in rows) == imported
    assert sum(r.problem is not None for r in rows) == problems
    for row in rows:  # exactly one of case / problem, and every case is canonical
        assert (row.case is None) == (row.problem is not None)
        if row.case:
            assert row.case.service_code in catalogue.catalogue
            assert row.case.requested_datetime.tzinfo is UTC
            assert row.case.requester is None
            assert row.case.lat is not None or row.case.address_string


def test_nyc_csv_first_rows(realworld: Path, catalogue: MappingSet) -> None:
    rows = _rows(realworld, "311_records/nyc/nyc311_2014-2019_export.csv", catalogue)
    first = rows[0]
    assert (first.line, first.source_id) == (2, "39573567")
    assert first.problem == (
        "unknown service: Non-Emergency Police Matter / Other (complaint details)"
    )
    case = next(r for r in rows if r.ok).case
    assert case is not None
    assert (case.source_system, case.source_id) == ("nyc311", "40157411")
    assert case.hub_id == new_hub_id("nyc311", "40157411", case.requested_datetime)
    assert case.service_code == "GRAFFITI" and case.service_name == "Graffiti Removal"
    # 08/31/2018 11:56:05 AM New York (EDT, UTC-4)
    assert case.requested_datetime == datetime(2018, 8, 31, 15, 56, 5, tzinfo=UTC)
    assert (case.lat, case.long) == (40.82474229806576, -73.89952737044254)
    assert (case.address_string, case.zipcode) == ("1041 PROSPECT AVENUE", "10459")
    assert case.attributes["borough"] == "BRONX"
    assert case.attributes["source_status"] == "Closed"
    assert case.status.value == "received"  # the source status is kept, not applied
    winter = next(r for r in rows if r.source_id == "41570456").case
    assert winter is not None  # 01/31/2019 05:35:00 PM EST (UTC-5)
    assert winter.requested_datetime == datetime(2019, 1, 31, 22, 35, tzinfo=UTC)


def test_nyc_brooklyn_first_row(realworld: Path, catalogue: MappingSet) -> None:
    case = _rows(realworld, "311_records/nyc/nyc311_2016_brooklyn_cb06.csv", catalogue)[0].case
    assert case is not None and case.source_id == "33648024"
    assert case.service_code == "NOISE"
    assert case.description == "Noise - Residential: Loud Music/Party"
    # 06/20/2016 10:04:21 PM EDT is the next day in UTC
    assert case.requested_datetime == datetime(2016, 6, 21, 2, 4, 21, tzinfo=UTC)


def test_nyc_socrata_2012(realworld: Path, catalogue: MappingSet) -> None:
    rows = _rows(realworld, "311_records/nyc/nyc311_2012_socrata_api.json", catalogue)
    assert (rows[0].line, rows[0].source_id) == (0, "24445308")
    assert rows[0].problem == "unknown service: Noise - Vehicle / Engine Idling"
    case = rows[1].case
    assert case is not None and case.source_id == "24445313"
    assert case.service_code == "SIDEWALK"  # "Sidewalk Condition" complaint type
    assert case.requested_datetime == datetime(2012, 11, 20, 22, 26, 40, tzinfo=UTC)
    assert case.attributes["descriptor"] == "Metal Protruding - Sign Stump"


def test_nyc_socrata_2024_descriptor_and_intersection(
    realworld: Path, catalogue: MappingSet
) -> None:
    case = _rows(realworld, "311_records/nyc/nyc311_2024_socrata_api.json", catalogue)[0].case
    assert case is not None and case.source_id == "61276295"
    assert case.service_code == "POTHOLE"  # type "Street Condition", descriptor "Pothole"
    assert case.address_string == "ST NICHOLAS AVENUE & WEST 178 STREET"
    assert case.requested_datetime == datetime(2024, 5, 27, 6, 8, 51, tzinfo=UTC)
    assert case.attributes["source_status"] == "Open"
    assert not any(k.startswith(":@") for k in case.attributes)


def test_boston_new_schema(realworld: Path, catalogue: MappingSet) -> None:
    rows = _rows(realworld, "311_records/boston/boston311_2025_open_cases.csv", catalogue)
    case = rows[0].case
    assert case is not None and (rows[0].line, case.source_id) == (2, "101005870246")
    assert (case.source_system, case.service_code) == ("boston311", "STRLGHT")
    assert case.requested_datetime == datetime(2025, 1, 24, 8, 24, 56, tzinfo=UTC)
    assert case.zipcode == "02128"  # stored as the float 2128.0
    assert case.address_string == "9-15 Orleans St East Boston MA 02128"
    assert case.attributes["neighborhood"] == "East Boston"
    assert case.attributes["ward"] == "Ward 1"
    assert "" not in case.attributes  # the pandas index column is dropped
    missing = [r for r in rows if r.problem == "missing location"]
    assert [(r.line, r.source_id) for r in missing] == [
        (119, "101005861543"),
        (573, "101005949601"),
    ]
    assert not any("&amp;" in (r.case.address_string or "") for r in rows if r.case)


def test_boston_legacy_schema(realworld: Path, catalogue: MappingSet) -> None:
    rows = _rows(realworld, "311_records/boston/boston311-100.csv", catalogue)
    assert rows[0].source_id == "101004143000"
    assert rows[0].problem is not None and rows[0].problem.endswith("; missing location")
    case = rows[1].case
    assert case is not None and case.source_id == "101004130437"
    assert case.service_code == "NEEDLE"
    assert case.requested_datetime == datetime(2022, 1, 19, 16, 18, tzinfo=UTC)  # EST
    assert (case.lat, case.long, case.zipcode) == (42.3634, -71.0566, "02113")
    # Boston's City Hall placeholder point is no location; the address is kept.
    placeholder = next(r for r in rows if r.source_id == "101004113721").case
    assert placeholder is not None and placeholder.lat is None and placeholder.long is None
    assert placeholder.address_string == (
        "INTERSECTION of Asticou Rd & Washington St Jamaica Plain MA"
    )


def test_sf_fixture(realworld: Path, catalogue: MappingSet) -> None:
    rows = _rows(realworld, "311_records/sf/sf311_open311_2011_django_fixture.json", catalogue)
    case = rows[0].case
    assert case is not None and (rows[0].line, case.source_id) == (55, "909923")
    assert (case.source_system, case.service_code) == ("sf311", "ABANVEH")
    # 2011-06-28 05:14:00 Los Angeles (PDT, UTC-7)
    assert case.requested_datetime == datetime(2011, 6, 28, 12, 14, tzinfo=UTC)
    assert case.address_string == "120 MANCHESTER ST SAN FRANCISCO, CA"
    assert (case.zipcode, case.lat, case.long) == ("94110", 37.744545, -122.41436)
    assert case.attributes["source_service_code"] == "033"
    assert sum(r.case.attributes["source_status"] == "Closed" for r in rows if r.case) > 0


def test_open311_requests_json(realworld: Path, catalogue: MappingSet) -> None:
    rows = _rows(realworld, "open311/bloomington/bloomington_requests.json", catalogue)
    assert rows[0].problem == (
        "unknown service: Traffic Suggestions / 4e7b3e4c992b945109000000; missing location"
    )
    case = rows[1].case
    assert case is not None and case.source_id == "4fbd3beeb1fe2c9f5c000001"
    assert (case.source_system, case.service_code) == ("open311", "GRAFFITI")
    assert case.requested_datetime == datetime(2012, 5, 23, 19, 35, 8, tzinfo=UTC)  # -04:00
    assert case.media_url is None  # addresses from exports are never carried to be fetched


def test_limit_and_source_system_override(realworld: Path, catalogue: MappingSet) -> None:
    path = realworld / "open311/bloomington/bloomington_requests.json"
    rows = list(read_export(path, catalogue=catalogue, limit=3, source_system="bloomington"))
    assert [r.line for r in rows] == [0, 1, 2]
    assert rows[1].case is not None and rows[1].case.source_system == "bloomington"


def test_thousand_rows_well_under_a_second(realworld: Path, catalogue: MappingSet) -> None:
    path = realworld / "311_records/nyc/nyc311_2014-2019_export.csv"
    started = time.perf_counter()
    rows = list(read_export(path, catalogue=catalogue))
    assert len(rows) == 1000
    assert time.perf_counter() - started < 0.5


# --------------------------------------------------------------------------- bad rows

BOSTON_HEADER = "case_enquiry_id,open_dt,case_status,case_title,type,location,latitude,longitude"
BAD_BOSTON = "\n".join(
    [
        BOSTON_HEADER,
        "1,2024-03-10 01:30:00,Open,Pothole,Request for Pothole Repair,1 Main St,42.35,-71.06",
        "2,yesterday,Open,Pothole,Request for Pothole Repair,1 Main St,42.35,-71.06",
        "3,2024-03-10 09:00:00,Open,Kittens,Kitten Rescue,1 Main St,42.35,-71.06",
        "4,2024-03-10 09:00:00,Open,Pothole,Request for Pothole Repair, ,0,0",
        "5,2024-03-10 09:00:00,Open,Pothole,Request for Pothole Repair,1 Main St,142.35,-71.06",
        "6,2024-03-10 09:00:00,Open,Pothole,Request for Pothole Repair,1 Main St,north,-71.06",
        '7,2024-07-04 12:00:00,Closed,"Needle, two lines",Needle Pickup,"2 Elm St\nBoston",,',
        ",2024-03-10 09:00:00,Open,Pothole,Request for Pothole Repair,1 Main St,42.35,-71.06",
        "9,2024-03-10 09:00:00",
        "",
    ]
)


def test_bad_rows_are_collected_not_raised(tmp_path: Path, catalogue: MappingSet) -> None:
    path = tmp_path / "export.csv"
    path.write_text(BAD_BOSTON, encoding="utf-8")
    rows = list(read_export(path, catalogue=catalogue))
    by_id = {r.source_id: r for r in rows}
    assert len(rows) == 9
    ok = by_id["1"].case
    assert ok is not None and ok.requested_datetime == datetime(2024, 3, 10, 6, 30, tzinfo=UTC)
    assert by_id["2"].problem == "bad date: 'yesterday'"
    assert by_id["3"].problem == "unknown service: Kitten Rescue / Kittens"
    assert by_id["4"].problem == "missing location"
    assert by_id["5"].problem == "bad coordinates: '142.35', '-71.06'"
    assert by_id["6"].problem == "bad coordinates: 'north', '-71.06'"
    multiline = by_id["7"]
    assert multiline.case is not None and multiline.case.address_string == "2 Elm St Boston"
    assert multiline.case.requested_datetime == datetime(2024, 7, 4, 16, tzinfo=UTC)  # EDT
    assert by_id[None].problem == "missing source id"
    short = by_id["9"]
    assert short.problem == "unknown service: (none); missing location"
    assert [r.line for r in rows] == [2, 3, 4, 5, 6, 7, 8, 10, 11]  # row 7 spans two lines


def test_open311_bad_records(tmp_path: Path, catalogue: MappingSet) -> None:
    path = tmp_path / "requests.json"
    path.write_text(
        '{"service_requests": ['
        '{"service_request_id": "a", "service_name": "Graffiti", "lat": 40.1, "long": -75.2,'
        ' "requested_datetime": "2020-01-02T03:04:05Z"},'
        '{"service_request_id": "b", "service_name": "Graffiti", "lat": 40.1, "long": -75.2},'
        '"not a record"]}',
        encoding="utf-8",
    )
    rows = list(read_export(path, catalogue=catalogue))
    assert rows[0].case is not None
    assert rows[0].case.requested_datetime == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert rows[1].problem == "missing requested date"
    assert rows[2].problem is not None and rows[2].case is None


def test_unknown_file_raises(tmp_path: Path, catalogue: MappingSet) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(UnknownFormat):
        list(read_export(path, catalogue=catalogue))
