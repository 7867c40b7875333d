"""Reading the contractor's acknowledgement and status files, quirks included.

What real file-drop feeds do (department-apis.md §4, Symology/Aurora via open311-adapter):
header rows vary per file (a banner line first, columns reordered or renamed), dates are
day-first (``dd/mm/yyyy HH:MM``), quoted and unquoted values are mixed, ids are zero-padded
(``00560250`` is not ``560250``), windows overlap (rows repeat across files), and an HTML
error page or a truncated upload can arrive where a CSV was expected.

A file is read whole or not at all: any problem raises :class:`BadFile` with a reason, and
the adapter quarantines the file. Nothing of a bad file becomes an event.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from hub.mapping.engine import local_to_utc
from hub.mapping.schema import CsvLayout

REQUIRED_ROLES = ("reference", "status")
DEFAULT_ROLES = {
    "reference": "CaseRef",
    "external_id": "ContractorRef",
    "status": "Status",
    "closure_code": "ReasonCode",
    "occurred_at": "CompletedAt",
    "note": "Notes",
    "media_url": "PhotoUrl",
}
HEADER_SEARCH_ROWS = 10  # banner lines a contractor puts above the header
_HTML = re.compile(rb"^\s*(<!doctype\s+html|<html|<\?xml[^>]*>\s*<html)", re.IGNORECASE)


class BadFile(ValueError):
    """The file cannot be trusted; `reason` says why (goes into quarantine, never PII)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StatusRow(NamedTuple):  # a tuple: a contractor's file has thousands of rows
    line: int
    values: dict[str, str]  # role → cell text (stripped; ids kept as written)

    def get(self, role: str) -> str:
        return self.values.get(role, "")


def normalise(name: str) -> str:
    """Header matching: ``Case Ref``, ``case_ref`` and ``"CaseRef "`` are one column."""
    return re.sub(r"[^a-z0-9]", "", name.casefold())


def decode(data: bytes, encoding: str) -> str:
    if data.startswith(b"\xef\xbb\xbf"):  # an Excel "CSV UTF-8" export
        return data[3:].decode("utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise BadFile(f"not {encoding} text (byte {exc.start})") from None


def check_shape(data: bytes) -> None:
    if not data.strip():
        raise BadFile("empty file")
    if _HTML.match(data[:512]) or b"<html" in data[:512].lower():
        raise BadFile("an HTML page, not CSV (the contractor's server sent an error page)")
    if not data.endswith((b"\n", b"\r")):
        raise BadFile("truncated: the last line has no line terminator")


def parse_status_file(data: bytes, layout: CsvLayout) -> list[StatusRow]:
    """Rows of an ack/status file, columns found by header name, in any order."""
    check_shape(data)
    text = decode(data, layout.encoding)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=layout.delimiter, strict=True)
        rows = list(reader)
    except csv.Error as exc:
        raise BadFile(f"malformed CSV ({exc})") from None
    header_at, columns = _find_header(rows, layout)
    width = len(rows[header_at])
    picked = list(columns.items())
    parsed = []
    for index, row in enumerate(rows[header_at + 1 :], start=header_at + 2):
        if not "".join(row).strip():
            continue  # blank lines between windows
        if len(row) != width:
            raise BadFile(f"line {index}: {len(row)} fields, the header has {width}")
        values = {role: row[i].strip() for role, i in picked}
        if not values["reference"] or not values["status"]:
            raise BadFile(f"line {index}: no case reference or no status")
        parsed.append(StatusRow(index, values))
    return parsed


def _find_header(rows: list[list[str]], layout: CsvLayout) -> tuple[int, dict[str, int]]:
    roles = {**DEFAULT_ROLES, **layout.roles}
    wanted = {role: normalise(column) for role, column in roles.items()}
    for at, row in enumerate(rows[:HEADER_SEARCH_ROWS]):
        names = [normalise(cell) for cell in row]
        if all(wanted[role] in names for role in REQUIRED_ROLES):
            found = {role: names.index(n) for role, n in wanted.items() if n in names}
            return at, found
    raise BadFile(
        f"no header row naming {roles['reference']} and {roles['status']} "
        f"in the first {HEADER_SEARCH_ROWS} lines"
    )


def parse_datetime(text: str, layout: CsvLayout, zone: ZoneInfo) -> datetime:
    """The layout's (day-first) format, with or without seconds, or ISO 8601 → UTC.

    A time without an offset is the contractor's wall time in `zone`, read by the hub's
    one rule (:func:`hub.mapping.engine.local_to_utc`, decision 0011) so a file and a
    webhook stamping the same wall time give the same instant."""
    return _parse_datetime(text.strip(), layout.date_format, zone)


@lru_cache(maxsize=65_536)  # a contractor's windows repeat each row's date many times
def _parse_datetime(value: str, date_format: str, zone: ZoneInfo) -> datetime:
    formats = [date_format]
    if "%M" in date_format and "%S" not in date_format:
        formats.append(date_format.replace("%M", "%M:%S"))
    formats.append(date_format.split(" ")[0])
    for fmt in formats:
        try:
            return local_to_utc(datetime.strptime(value, fmt), zone)
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadFile(f"date {value!r} is not {date_format}") from None
    return local_to_utc(parsed, zone)
