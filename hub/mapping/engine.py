"""The runtime side of mappings: routing, payload building and status translation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from enum import Enum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hub.mapping.checks import is_datetime_path
from hub.mapping.problems import MappingError, PayloadError, UnmappedStatus
from hub.mapping.schema import (
    CatalogueFile,
    DepartmentFile,
    FieldSpec,
    FileLayout,
    RouteRule,
    ServiceDefinition,
)
from hub.mapping.validate import collect, mappings_dir
from hub.model import Case, CaseStatus, Route


@dataclass(frozen=True)
class StatusMapping:
    """What a department status code means on the canonical side."""

    status: CaseStatus
    closure_reason: str | None = None
    raw_code: str = ""


@dataclass(frozen=True)
class _Rule:
    """A route rule with where it came from (for ordering and the route reason)."""

    rule: RouteRule
    department: str
    source: str
    order: int

    def matches(self, case: Case) -> bool:
        return all(_matches(lookup_path(case, k), v) for k, v in (self.rule.when or {}).items())

    @property
    def specificity(self) -> int:
        return len(self.rule.when or {})

    def to_route(self) -> Route:
        rule = self.rule
        when = ", ".join(f"{k}={v!r}" for k, v in (rule.when or {}).items())
        reason = f"mapping {self.source}" + (f" when {when}" if when else "")
        return Route(
            department=rule.department or self.department,
            work_order_type=rule.work_order_type,
            priority=rule.priority,
            sla_hours=rule.sla_hours,
            team=rule.team,
            reason=reason,
        )


def _matches(actual: Any, expected: Any) -> bool:
    """`when` compares as text, case-insensitively; a list means any of its values."""
    if actual is None:
        return False
    options = expected if isinstance(expected, list) else [expected]
    text = _text(actual).casefold()
    return any(_text(option).casefold() == text for option in options)


def _text(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def lookup_path(case: Case, path: str) -> Any:
    """The value at a dotted Case path (`attributes.ward`, `requester.email`, `lat`)."""
    head, _, rest = path.partition(".")
    return _at(case, head, rest)


def _at(case: Case, head: str, rest: str) -> Any:
    """lookup_path with the path already split at its first dot."""
    value: Any = getattr(case, head, None)
    if not rest or value is None:
        return value
    if isinstance(value, dict):
        return value.get(rest)
    return getattr(value, rest, None)


# Values _converted passes through unchanged (exact types: a StrEnum is a str, but is
# sent as its value).
_PLAIN = frozenset({str, int, float, bool})


@dataclass(frozen=True, slots=True)
class _Field:
    """One payload field with what depends only on the mapping worked out once: the
    dotted names split, the lookup table found, the time zone chosen."""

    name: str
    spec: FieldSpec
    parents: tuple[str, ...]  # `Location.Address` nests under "Location"
    leaf: str
    head: str | None  # the source path (path or lookup path) split at its first dot
    rest: str
    table: dict[str, Any] | None  # a lookup field's table
    parse_datetime: bool  # text at a datetime path is parsed before formatting
    zone: tzinfo


@dataclass
class DepartmentMapping:
    """One department's mapping file, ready to use."""

    name: str
    adapter: str
    timezone: str
    source: Path
    model: DepartmentFile
    local_timezone: ZoneInfo = field(init=False)

    def __post_init__(self) -> None:
        self.local_timezone = ZoneInfo(self.timezone)
        folded: dict[str, list[str]] = {}
        for code in self.model.status_in:
            folded.setdefault(code.strip().casefold(), []).append(code)
        # the forgiving match is used only where it cannot be ambiguous
        self._folded = {k: v[0] for k, v in folded.items() if len(v) == 1}
        self._planned: tuple[DepartmentFile, tzinfo, list[_Field]] | None = None

    # ---------------------------------------------------------------- sections

    @property
    def raw(self) -> dict[str, Any]:
        """The whole file as validated data, for adapter-specific sections."""
        return self.model.model_dump(mode="json")

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.model.extra)

    @property
    def file_layout(self) -> FileLayout | None:
        return self.model.file_layout

    @property
    def lookups(self) -> dict[str, dict[str, Any]]:
        return {name: dict(table) for name, table in self.model.lookups.items()}

    @property
    def routes(self) -> list[RouteRule]:
        return list(self.model.routes)

    # ---------------------------------------------------------------- status

    @property
    def statuses(self) -> frozenset[str]:
        """Every status code the department declared (mapped or ignored)."""
        return frozenset(self.model.status_in)

    def map_status_in(self, raw_code: str) -> StatusMapping | None:
        """Canonical meaning of a department code; None when explicitly ignored.

        Exact match first, then a trimmed case-insensitive one; an unknown code raises
        UnmappedStatus, it is never defaulted.
        """
        code = (
            raw_code
            if raw_code in self.model.status_in
            else self._folded.get(raw_code.strip().casefold())
        )
        if code is None:
            raise UnmappedStatus(self.name, raw_code)
        target = self.model.status_in[code]
        if target is None:
            return None
        return StatusMapping(CaseStatus(target.status), target.closure_reason, raw_code)

    def status_out(self, canonical: str) -> str | None:
        """Department code for a change the 311 side originates (None: not supported)."""
        key = canonical.value if isinstance(canonical, CaseStatus) else canonical
        return self.model.status_out.get(key)

    # ---------------------------------------------------------------- payload

    def local_to_utc(self, value: datetime) -> datetime:
        """A department time (naive: wall time in the mapping's zone) in UTC."""
        return local_to_utc(value, self.local_timezone)

    def build_payload(self, case: Case) -> dict[str, Any]:
        """The department payload for a case; empty optional fields are left out."""
        payload: dict[str, Any] = {}
        for planned in self._plan():
            value = _field_value(case, planned)
            if value is not None:
                node = payload
                for part in planned.parents:
                    node = node.setdefault(part, {})
                node[planned.leaf] = value
        return payload

    def _plan(self) -> list[_Field]:
        """The fields prepared once per mapping (built on every create, per case); made
        again if the model or zone were replaced."""
        planned = self._planned
        if planned is None or planned[0] is not self.model or planned[1] is not self.local_timezone:
            fields = [self._prepare(name, spec) for name, spec in self.model.fields.items()]
            planned = self._planned = (self.model, self.local_timezone, fields)
        return planned[2]

    def _prepare(self, name: str, spec: FieldSpec) -> _Field:
        *parents, leaf = name.split(".")
        source = spec.lookup.path if spec.lookup is not None else spec.path
        head, _, rest = source.partition(".") if source is not None else (None, "", "")
        return _Field(
            name=name,
            spec=spec,
            parents=tuple(parents),
            leaf=leaf,
            head=head,
            rest=rest,
            table=self.model.lookups[spec.lookup.table] if spec.lookup is not None else None,
            parse_datetime=bool(spec.format and spec.path and is_datetime_path(spec.path)),
            zone=self.local_timezone if spec.timezone == "department" else UTC,
        )


def _field_value(case: Case, planned: _Field) -> Any:
    spec = planned.spec
    if planned.table is not None:
        key = _at(case, planned.head, planned.rest)
        value = None if key is None else planned.table.get(_text(key))
    elif planned.head is not None:
        value = _converted(_at(case, planned.head, planned.rest), planned)
    else:
        value = spec.const
    if value is None or value == "" or value == []:
        value = spec.default
    if value is None and spec.required:
        source = spec.source_path or "const"
        raise PayloadError(planned.name, f"required field has no value (from {source})")
    return value


def _converted(value: Any, planned: _Field) -> Any:
    if value is None:
        return None
    if planned.parse_datetime and isinstance(value, str):
        value = _parse_datetime(value)
    elif type(value) in _PLAIN:
        return value
    if isinstance(value, datetime):
        return _datetime(value, planned)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return [getattr(item, "url", item) for item in value]  # evidence -> URLs
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    return value


def _datetime(value: datetime, planned: _Field) -> str:
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    value = value.astimezone(planned.zone)
    fmt = planned.spec.format
    return value.strftime(fmt) if fmt else value.isoformat()


# ------------------------------------------------------------------ department wall time


def local_to_utc(value: datetime, zone: tzinfo) -> datetime:
    """A department time in UTC; a naive one is wall time in `zone`.

    Wall time is not always one instant, and the reading here is fixed (fold=0) so that
    every path (adapters, webhooks) gives the same answer:

    - fall-back repeats an hour (01:00-01:59 twice in New York): the first occurrence
      (daylight time) is taken; :func:`wall_readings` gives the other one to whoever
      must order events (status sync);
    - spring-forward skips an hour (02:30 never happens): it is read with the offset in
      force before the change, as a clock not yet set forward would mean it, so 02:30
      EST is 07:30Z (03:30 EDT). Nothing raises.
    """
    aware = value.replace(tzinfo=zone, fold=0) if value.tzinfo is None else value
    return aware.astimezone(UTC)


def wall_readings(instant: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """The two UTC instants the `zone` wall time of `instant` can stand for, earliest
    first: equal except inside a fall-back's repeated hour, where 01:40 in New York is
    05:40Z (EDT) or 06:40Z (EST) whichever of the two `instant` is."""
    wall = instant.astimezone(zone)
    other = wall.replace(fold=1 - wall.fold)
    shift = (wall.utcoffset() or timedelta()) - (other.utcoffset() or timedelta())
    if not shift:  # the common case, cheaply: status sync asks for every event
        return instant, instant
    # The same wall time with the other offset; a UTC instant never lands in a
    # spring-forward gap, so this is fall-back's other occurrence.
    return min(instant, instant + shift), max(instant, instant + shift)


def _parse_datetime(text: str) -> datetime | str:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return text


@dataclass
class MappingSet:
    """The service catalogue and every department mapping, validated."""

    catalogue: dict[str, ServiceDefinition]
    departments: dict[str, DepartmentMapping]
    _rules: dict[str, list[_Rule]] = field(default_factory=dict, repr=False)
    _names: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for service in self.catalogue.values():
            for label in (service.service_code, service.service_name, *service.aliases):
                self._names.setdefault(label.strip().casefold(), service.service_code)
        order = 0
        for dept in self.departments.values():
            for i, rule in enumerate(dept.model.routes):
                where = f"{dept.source.name} routes[{i}]"
                self._rules.setdefault(rule.service_code, []).append(
                    _Rule(rule, dept.name, where, order)
                )
                order += 1

    def service_for_name(self, name_or_alias: str) -> ServiceDefinition | None:
        """Service by code, name or alias (case-insensitive), e.g. a CRM export's type."""
        code = self._names.get(name_or_alias.strip().casefold())
        return self.catalogue.get(code) if code else None

    def route(self, case: Case) -> Route | None:
        """`when` rules first, most specific first (then file order); then the plain route."""
        rules = self._rules.get(case.service_code, [])
        ordered = sorted(rules, key=lambda r: (-r.specificity, r.order))
        for rule in ordered:
            if rule.matches(case):
                return rule.to_route()
        return None

    def department(self, name: str) -> DepartmentMapping:
        return self.departments[name]


def load_mappings(directory: Path | None = None) -> MappingSet:
    """Load and validate every *.yaml of `directory` (default: the mappings directory).

    Raises MappingError with every problem when anything is invalid: bad mappings never
    half-load.
    """
    problems, docs = collect(directory or mappings_dir(), None)
    if problems:
        raise MappingError(problems)
    catalogue: dict[str, ServiceDefinition] = {}
    departments: dict[str, DepartmentMapping] = {}
    for doc in docs:
        if isinstance(doc.model, CatalogueFile):
            catalogue.update((s.service_code, s) for s in doc.model.services)
        elif isinstance(doc.model, DepartmentFile):
            m = doc.model
            departments[m.department] = DepartmentMapping(
                m.department, m.adapter, m.timezone, doc.source.path, m
            )
    return MappingSet(catalogue, departments)
