"""Read 311 CRM exports into canonical Cases, one ImportedRow per record.

Formats are detected from the content, not the file name:

* NYC Open Data CSV export (Title-Case headers: ``Unique Key``, ``Created Date`` ...)
* NYC Socrata SODA JSON (snake_case: ``unique_key``, ``created_date`` ...)
* Boston 311 CKAN CSV, new schema (``sla_target_dt``; sometimes a leading unnamed pandas
  index column) and legacy schema (``target_dt``)
* SF Open311 requests stored as a Django fixture (``[{pk, model, fields}]``)
* a plain Open311 GeoReport v2 ``requests.json`` list (or ``{"service_requests": [...]}``)
* an Open311 GeoReport v2 ``requests.xml`` document (``<service_requests><request>``),
  parsed with entities and DTDs refused

A bad record never raises: it comes back with ``case=None`` and the reasons in
``problem``. Only an unreadable or unrecognised *file* raises (``UnknownFormat``).

Photo URLs in exports are deliberately not mapped to ``media_url``: the hub may fetch
media later, and it must never call an address taken from a third-party export.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from lxml import etree
from pydantic import ValidationError

from hub.mapping import MappingSet, ServiceDefinition, load_mappings
from hub.model import Case, new_hub_id

Record = dict[str, Any]

NEW_YORK = ZoneInfo("America/New_York")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")

# Boston geocodes a case it cannot place (often an intersection) to this City Hall point.
BOSTON_PLACEHOLDER = (42.3594, -71.0587)

_BLANKS = frozenset({"", "N/A", "NA", "Unspecified", "UNSPECIFIED", "null", "None"})
_DATE_FORMATS = ("%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y")
_ZIP = re.compile(r"^(\d{3,5})(?:\.0+|-\d{4})?$")
_SPACES = re.compile(r"\s+")


class ExportFormat(StrEnum):
    NYC_CSV = "nyc-csv"
    NYC_SOCRATA = "nyc-socrata"
    BOSTON_CSV = "boston-csv"
    SF_FIXTURE = "sf-fixture"
    OPEN311_JSON = "open311-json"
    OPEN311_XML = "open311-xml"


class UnknownFormat(ValueError):
    """The file is not one of the export formats this module reads."""


@dataclass(frozen=True, slots=True)
class ImportedRow:
    """One record of an export: a Case, or the reason it could not become one.

    ``line`` is the 1-based line where the record starts for CSV (the header is line 1)
    and the 0-based index in the top-level list for JSON.
    """

    line: int
    case: Case | None = None
    problem: str | None = None
    source_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.case is not None


@dataclass(slots=True)
class _Raw:
    """What a format mapper extracts before the common validation."""

    source_id: str | None
    labels: tuple[Any, ...]  # candidate service names, most telling first
    requested: Any
    lat: Any = None
    long: Any = None
    address: str | None = None
    zipcode: Any = None
    description: str | None = None
    status: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Format:
    source_system: str
    zone: tzinfo  # where naive timestamps were recorded
    mapper: Callable[[Record], _Raw]
    placeholder: tuple[float, float] | None = None


# --------------------------------------------------------------------------- public API


def read_export(
    path: Path,
    *,
    catalogue: MappingSet | None = None,
    limit: int | None = None,
    source_system: str | None = None,
) -> Iterator[ImportedRow]:
    """Yield one ImportedRow per record of the export at `path` (at most `limit`).

    `catalogue` maps the export's type names to service codes (default: the project's
    mappings). `source_system` overrides the detected one (e.g. to tell two Open311
    cities apart, since their request ids may collide).
    """
    services = catalogue if catalogue is not None else load_mappings()
    kind, records = _open(Path(path))
    spec = _FORMATS[kind]
    system = source_system or spec.source_system
    lookup = _ServiceLookup(services)
    for count, (line, record) in enumerate(records):
        if limit is not None and count >= limit:
            return
        yield _import(line, record, spec, system, lookup)


def detect_format(path: Path) -> ExportFormat:
    """The export format of `path`; raises UnknownFormat when it is none of them."""
    return _open(Path(path))[0]


# --------------------------------------------------------------------------- detection


def _open(path: Path) -> tuple[ExportFormat, Iterator[tuple[int, Record]]]:
    with path.open(encoding="utf-8-sig") as handle:
        head = handle.read(256).lstrip()
    if head.startswith(("[", "{")):
        return _open_json(path)
    if head.startswith("<"):
        return _open_xml(path)
    return _open_csv(path)


def _open_xml(path: Path) -> tuple[ExportFormat, Iterator[tuple[int, Record]]]:
    # No entity expansion, no DTD, no network: a billion-laughs file is refused, not expanded.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.parse(str(path), parser).getroot()
    except etree.XMLSyntaxError as exc:
        raise UnknownFormat(f"{path}: invalid XML: {exc}") from exc
    if root.getroottree().docinfo.doctype:
        raise UnknownFormat(f"{path}: XML with a DOCTYPE is refused (entity expansion)")
    if etree.QName(root).localname != "service_requests":
        raise UnknownFormat(f"{path}: XML root <{root.tag}> is not <service_requests>")
    return ExportFormat.OPEN311_XML, _xml_records(root)


def _xml_records(root: Any) -> Iterator[tuple[int, Record]]:
    requests = [el for el in root if etree.QName(el).localname == "request"]
    for index, element in enumerate(requests):
        yield (
            index,
            {
                etree.QName(child).localname: (child.text or "").strip()
                for child in element
                if isinstance(child.tag, str)
            },
        )


def _open_csv(path: Path) -> tuple[ExportFormat, Iterator[tuple[int, Record]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), [])
    names = set(header)
    if {"Unique Key", "Created Date"} <= names:
        return ExportFormat.NYC_CSV, _csv_records(path)
    if {"case_enquiry_id", "open_dt"} <= names:
        return ExportFormat.BOSTON_CSV, _csv_records(path)
    raise UnknownFormat(f"{path}: CSV header matches no known export ({header[:5]}...)")


def _csv_records(path: Path) -> Iterator[tuple[int, Record]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        start = 2  # line 1 is the header
        for record in reader:
            yield start, record
            start = reader.line_num + 1  # quoted fields may span lines


def _open_json(path: Path) -> tuple[ExportFormat, Iterator[tuple[int, Record]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise UnknownFormat(f"{path}: invalid JSON: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("service_requests"), list):
        data = data["service_requests"]  # some GeoReport servers wrap the list
    if not isinstance(data, list):
        raise UnknownFormat(f"{path}: expected a JSON list of records")
    first = next((item for item in data if isinstance(item, dict)), {})
    if "model" in first and "fields" in first:
        return ExportFormat.SF_FIXTURE, _fixture_records(data)
    if "unique_key" in first and "created_date" in first:
        return ExportFormat.NYC_SOCRATA, _json_records(data)
    if "service_request_id" in first or "service_code" in first:
        return ExportFormat.OPEN311_JSON, _json_records(data)
    if not data:
        return ExportFormat.OPEN311_JSON, iter(())
    raise UnknownFormat(f"{path}: JSON records match no known export ({sorted(first)[:5]})")


def _json_records(data: list[Any]) -> Iterator[tuple[int, Record]]:
    for index, item in enumerate(data):
        yield index, item if isinstance(item, dict) else {}


def _fixture_records(data: list[Any]) -> Iterator[tuple[int, Record]]:
    # A Django fixture also holds cities, streets and geographies: only requests count.
    for index, item in enumerate(data):
        if isinstance(item, dict) and str(item.get("model", "")).endswith(".request"):
            fields = item.get("fields")
            yield index, fields if isinstance(fields, dict) else {}


# --------------------------------------------------------------------------- format mappers


_NYC_COLUMNS = (
    "Unique Key",
    "Created Date",
    "Status",
    "Complaint Type",
    "Descriptor",
    "Incident Address",
    "Intersection Street 1",
    "Intersection Street 2",
    "Incident Zip",
    "Latitude",
    "Longitude",
    "Agency",
    "Borough",
    "Community Board",
    "Location Type",
    "Open Data Channel Type",
)
# The CSV export and the Socrata API name the same columns two ways.
_NYC_CSV = {name: name for name in _NYC_COLUMNS}
_NYC_API = {name: name.lower().replace(" ", "_") for name in _NYC_COLUMNS}


def _nyc(r: Record) -> _Raw:
    col = _NYC_API if "unique_key" in r else _NYC_CSV
    get = r.get
    complaint, descriptor = _text(get(col["Complaint Type"])), _text(get(col["Descriptor"]))
    address = _text(get(col["Incident Address"])) or _join(
        " & ", get(col["Intersection Street 1"]), get(col["Intersection Street 2"])
    )
    return _Raw(
        source_id=_text(get(col["Unique Key"])),
        labels=(complaint, descriptor),
        requested=get(col["Created Date"]),
        lat=get(col["Latitude"]),
        long=get(col["Longitude"]),
        address=address,
        zipcode=get(col["Incident Zip"]),
        description=_join(": ", complaint, descriptor) if complaint != descriptor else complaint,
        status=get(col["Status"]),
        attributes=_pick(
            r,
            {
                "source_type": col["Complaint Type"],
                "descriptor": col["Descriptor"],
                "agency": col["Agency"],
                "borough": col["Borough"],
                "community_board": col["Community Board"],
                "location_type": col["Location Type"],
                "channel": col["Open Data Channel Type"],
            },
        ),
    )


def _boston(r: Record) -> _Raw:
    get = r.get
    return _Raw(
        source_id=_text(get("case_enquiry_id")),
        labels=(get("type"), get("case_title"), get("reason")),
        requested=get("open_dt"),
        lat=get("latitude"),
        long=get("longitude"),
        address=_text(html.unescape(get("location") or "")),  # the 2025 file has &amp;
        zipcode=get("location_zipcode"),
        description=_text(get("case_title")) or _text(get("type")),
        status=get("case_status"),
        attributes=_pick(
            r,
            {
                "source_type": "type",
                "case_title": "case_title",
                "reason": "reason",
                "department": "department",
                "queue": "queue",
                "neighborhood": "neighborhood",
                "ward": "ward",
                "city_council_district": "city_council_district",
                "pwd_district": "pwd_district",
                "channel": "source",
            },
        ),
    )


def _open311(r: Record) -> _Raw:
    get = r.get
    return _Raw(
        source_id=_text(get("service_request_id")),
        labels=(get("service_name"), get("service_code")),
        requested=get("requested_datetime"),
        lat=get("lat"),
        long=get("long"),
        address=_text(get("address")) or _text(get("address_string")),
        zipcode=get("zipcode"),
        description=_text(get("description")),
        status=get("status"),
        attributes=_pick(
            r,
            {
                "source_type": "service_name",
                "source_service_code": "service_code",
                "agency_responsible": "agency_responsible",
                "status_notes": "status_notes",
            },
        ),
    )


_FORMATS: dict[ExportFormat, _Format] = {
    ExportFormat.NYC_CSV: _Format("nyc311", NEW_YORK, _nyc),
    ExportFormat.NYC_SOCRATA: _Format("nyc311", NEW_YORK, _nyc),
    ExportFormat.BOSTON_CSV: _Format("boston311", NEW_YORK, _boston, BOSTON_PLACEHOLDER),
    ExportFormat.SF_FIXTURE: _Format("sf311", LOS_ANGELES, _open311),
    # A bare Open311 list names no city; its timestamps normally carry an offset.
    ExportFormat.OPEN311_JSON: _Format("open311", UTC, _open311),
    ExportFormat.OPEN311_XML: _Format("open311", UTC, _open311),
}


# --------------------------------------------------------------------------- common build


class _ServiceLookup:
    """Memoised `service_for_name`: exports repeat a few dozen labels thousands of times."""

    def __init__(self, catalogue: MappingSet) -> None:
        self._catalogue = catalogue
        self._memo: dict[str, ServiceDefinition | None] = {}

    def first(self, labels: Iterable[Any]) -> ServiceDefinition | None:
        for label in labels:
            text = _text(label)
            if text is None:
                continue
            if text not in self._memo:
                self._memo[text] = self._catalogue.service_for_name(text)
            if self._memo[text] is not None:
                return self._memo[text]
        return None


def _import(
    line: int, record: Record, spec: _Format, system: str, lookup: _ServiceLookup
) -> ImportedRow:
    try:
        raw = spec.mapper(record)
    except (AttributeError, TypeError, ValueError) as exc:  # a record of the wrong shape
        return ImportedRow(line, problem=f"unreadable record: {exc}")
    problems: list[str] = []
    service = lookup.first(raw.labels)
    if service is None:
        shown = " / ".join(t for t in map(_text, raw.labels) if t) or "(none)"
        problems.append(f"unknown service: {shown}")
    if not raw.source_id:
        problems.append("missing source id")
    requested = _parse_datetime(raw.requested, spec.zone, problems)
    lat, long = _coordinates(raw.lat, raw.long, spec.placeholder, problems)
    address = _clean_address(raw.address)
    if lat is None and address is None and not any(p.startswith("bad coord") for p in problems):
        problems.append("missing location")
    if problems or service is None or requested is None:
        return ImportedRow(line, problem="; ".join(problems), source_id=raw.source_id)
    status = _text(raw.status)
    attributes = {**raw.attributes, **({"source_status": status} if status else {})}
    try:
        case = Case(
            hub_id=new_hub_id(system, raw.source_id, requested),
            source_system=system,
            source_id=raw.source_id,
            service_code=service.service_code,
            service_name=service.service_name,
            description=raw.description,
            lat=lat,
            long=long,
            address_string=address,
            zipcode=_zipcode(raw.zipcode),
            requested_datetime=requested,
            updated_datetime=requested,  # deterministic: re-importing gives equal cases
            attributes=attributes,
        )
    except ValidationError as exc:
        return ImportedRow(line, problem=f"invalid case: {exc}", source_id=raw.source_id)
    return ImportedRow(line, case=case, source_id=raw.source_id)


def _parse_datetime(value: Any, zone: tzinfo, problems: list[str]) -> datetime | None:
    """Parse ISO or NYC-style timestamps; naive ones are local to `zone`. Returns UTC."""
    text = _text(value)
    if text is None:
        problems.append("missing requested date")
        return None
    parsed = _try_parse(text)
    if parsed is None:
        problems.append(f"bad date: {text!r}")
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)  # fold=0: an ambiguous DST hour reads as the first
    return parsed.astimezone(UTC)


def _try_parse(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def _coordinates(
    lat_value: Any, long_value: Any, placeholder: tuple[float, float] | None, problems: list[str]
) -> tuple[float | None, float | None]:
    try:
        lat, long = _number(lat_value), _number(long_value)
    except (TypeError, ValueError):
        problems.append(f"bad coordinates: {lat_value!r}, {long_value!r}")
        return None, None
    if lat is None or long is None or lat == 0 or long == 0:
        return None, None  # 0/empty (or half a point) means "not geocoded"
    if not (-90 <= lat <= 90 and -180 <= long <= 180):
        problems.append(f"bad coordinates: {lat_value!r}, {long_value!r}")
        return None, None
    if placeholder and (round(lat, 4), round(long, 4)) == placeholder:
        return None, None
    return lat, long


def _number(value: Any) -> float | None:
    """A finite float or None when blank; ValueError when present but not a number."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _zipcode(value: Any) -> str | None:
    """Five-digit ZIP; Boston's 2025 file stores 02128 as the float 2128.0."""
    text = _text(value if not isinstance(value, int) else str(value))
    match = _ZIP.match(text) if text else None
    return match.group(1).zfill(5) if match else None


def _clean_address(value: str | None) -> str | None:
    if not value:
        return None
    text = _SPACES.sub(" ", value).replace(" ,", ",").strip(" ,")
    return text or None


# --------------------------------------------------------------------------- small helpers


def _text(value: Any) -> str | None:
    """Stripped text, or None for blanks and the exports' placeholders ("N/A", " ")."""
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return None if text in _BLANKS else text


def _join(sep: str, *values: Any) -> str | None:
    parts = [t for t in map(_text, values) if t]
    return sep.join(parts) or None


def _pick(record: Record, columns: dict[str, str]) -> dict[str, str]:
    picked = {}
    for name, column in columns.items():
        text = _text(record.get(column))
        if text is not None:
            picked[name] = text
    return picked
