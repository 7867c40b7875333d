"""Turning parsed YAML into models, and the semantic checks pydantic cannot do.

Every check reports the line of the offending item through the document's LineMap.
"""

from __future__ import annotations

import codecs
import difflib
import re
import typing
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ValidationError

from hub.mapping.problems import Problem
from hub.mapping.schema import CatalogueFile, CsvLayout, DepartmentFile, FieldSpec
from hub.mapping.yamlsource import PathKey, YamlDocument, format_path
from hub.model import Case, CaseStatus, Closure, Requester

CANONICAL = frozenset(s.value for s in CaseStatus)
# What the 311 side originates towards a department; everything else flows inwards only.
OUTGOING = ("cancelled", "reopened", "closed", "note")
DATETIME_FIELDS = frozenset({"requested_datetime", "updated_datetime", "sla_due"})
_SUBFIELDS: dict[str, frozenset[str] | None] = {
    "attributes": None,  # any attribute code
    "requester": frozenset(Requester.model_fields),
    "closure": frozenset(Closure.model_fields),
}
_STRFTIME = set("aAwdbBmyYHIpMSfzZjUWcxXGuVeTDFhnrtRCgklsP%")
_SECRET_WORDS = re.compile(r"(?i)pass(word)?|secret|token|api_?key|credential|private_?key")


@dataclass
class Doc:
    """One mapping file: its source, what it is, and its model when it parsed."""

    source: YamlDocument
    kind: Literal["catalogue", "department"]
    target: bool  # a file being validated (not just context)
    model: CatalogueFile | DepartmentFile | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def file(self) -> str:
        return str(self.source.path)

    def at(self, path: PathKey, message: str, *, key: bool = False) -> Problem:
        lines = self.source.lines
        line = lines.key_line(path) if key else lines.value_line(path)
        return Problem(self.file, line, format_path(path), message)

    def where(self, path: PathKey) -> str:
        return f"{self.source.path.name}:{self.source.lines.value_line(path)}"


def kind_of(source: YamlDocument) -> Literal["catalogue", "department"]:
    data = source.data
    if source.path.stem == "catalogue":
        return "catalogue"
    if isinstance(data, dict) and "services" in data and "department" not in data:
        return "catalogue"
    return "department"


# --------------------------------------------------------------------------- parsing


def parse(doc: Doc) -> None:
    """Validate structure and types with pydantic; errors become line-precise problems."""
    doc.problems.extend(doc.source.problems)
    if doc.source.data is None:
        return
    if not isinstance(doc.source.data, dict):
        doc.problems.append(doc.at((), "a mapping file must be a YAML mapping (key: value)"))
        return
    model: type[BaseModel] = CatalogueFile if doc.kind == "catalogue" else DepartmentFile
    # top-level `x-…` keys only hold YAML anchors for reuse (as in docker compose)
    data = {k: v for k, v in doc.source.data.items() if not k.startswith("x-")}
    try:
        doc.model = model.model_validate(data)  # type: ignore[assignment]
    except ValidationError as exc:
        doc.problems.extend(_from_pydantic(doc, exc))


def _from_pydantic(doc: Doc, exc: ValidationError) -> list[Problem]:
    merged: dict[tuple[int, str], list[str]] = defaultdict(list)
    for error in exc.errors(include_url=False):
        path, is_key = _resolve(doc.source.data, error)
        line = doc.source.lines.key_line(path) if is_key else doc.source.lines.value_line(path)
        shown = path if error["type"] != "missing" else (*path, error["loc"][len(path)])
        message = _message(error, _root(doc))
        bucket = merged[(line, format_path(shown))]
        if message not in bucket:
            bucket.append(message)
    return [
        Problem(doc.file, line, name, " / ".join(messages[:3]))
        for (line, name), messages in merged.items()
    ]


def _root(doc: Doc) -> type[BaseModel]:
    return CatalogueFile if doc.kind == "catalogue" else DepartmentFile


def _suggestion(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """' (did you mean ...)' for a misspelt key, from the model the key was found in."""
    model = _model_at(root, loc[:-1])
    if model is None:
        return ""
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = root
    pending: type[BaseModel] | None = None
    for part in loc:
        if current is not None and part in current.model_fields:
            annotation = current.model_fields[part].annotation
            inner = _inner_model(annotation)
            in_container = typing.get_origin(annotation) in (list, dict)
            current, pending = (None, inner) if in_container else (inner, None)
        else:  # a list index or dict key: step into the container's items
            current, pending = pending, None
    return current


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if found := _inner_model(arg):
            return found
    return None


def _resolve(data: Any, error: Any) -> tuple[PathKey, bool]:
    """The part of a pydantic loc that exists in the data (union tags are dropped)."""
    path: list[str | int] = []
    node = data
    for part in error["loc"]:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if not (in_dict or in_list):
            break
        node = node[part]
        path.append(part)
    return tuple(path), error["type"] == "extra_forbidden"


def _message(error: Any, root: type[BaseModel]) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown key" + _suggestion(root, error["loc"])
    if kind == "missing":
        return "required key is missing"
    msg = msg.removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, bool) and kind.endswith("_type"):
        return "YAML reads unquoted yes/no/on/off/true/false as a boolean: quote the value"
    if isinstance(value, str | int | float | bool) and kind not in ("value_error",):
        msg += f" (got {value!r})"
    return msg


# --------------------------------------------------------------------------- helpers


def case_path_problem(path: str) -> str | None:
    """None when `path` names something on a Case, else why not."""
    head, _, rest = path.partition(".")
    if head not in Case.model_fields:
        return f"{path!r} is not a Case field"
    if not rest:
        return None
    if head not in _SUBFIELDS:
        return f"{head!r} has no sub-fields"
    allowed = _SUBFIELDS[head]
    if allowed is not None and rest not in allowed:
        return f"{rest!r} is not a field of {head} (one of {', '.join(sorted(allowed))})"
    return None


def is_datetime_path(path: str) -> bool:
    return path in DATETIME_FIELDS or path.startswith("attributes.")


def strftime_problem(fmt: str) -> str | None:
    i = 0
    while i < len(fmt):
        if fmt[i] != "%":
            i += 1
            continue
        j = i + 1
        if j < len(fmt) and fmt[j] == "-":  # glibc "no padding" flag
            j += 1
        if j >= len(fmt):
            return f"format {fmt!r} ends with a lone '%'"
        if fmt[j] not in _STRFTIME:
            return f"unknown strftime directive '%{fmt[j]}' in {fmt!r}"
        i = j + 1
    return None


def timezone_problem(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r} (use an IANA name like America/New_York)"
    return None


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """What cross-file checks see: the catalogue and every department, by name."""

    services: dict[str, tuple[Doc, int]]
    departments: dict[str, Doc]
    catalogue_ok: bool = True  # False: the catalogue's own errors say it, skip service checks


def catalogue_checks(doc: Doc) -> Iterable[Problem]:
    assert isinstance(doc.model, CatalogueFile)
    seen: dict[str, int] = {}
    names: dict[str, tuple[str, PathKey]] = {}
    for i, service in enumerate(doc.model.services):
        path: PathKey = ("services", i)
        if service.service_code in seen:
            first = doc.where(("services", seen[service.service_code]))
            yield doc.at((*path, "service_code"), f"duplicate service code (first at {first})")
        seen.setdefault(service.service_code, i)
        yield from _attribute_checks(doc, path, service.attributes)
        labels = [("service_name", service.service_name)]
        labels += [(("aliases", j), alias) for j, alias in enumerate(service.aliases)]
        for where, label in labels:
            sub = (*path, *where) if isinstance(where, tuple) else (*path, where)
            owner = names.get(label.casefold())
            if owner and owner[0] != service.service_code:
                first = doc.where(owner[1])
                yield doc.at(sub, f"name {label!r} already belongs to {owner[0]} ({first})")
            names.setdefault(label.casefold(), (service.service_code, sub))


def _attribute_checks(doc: Doc, path: PathKey, attributes: list[Any]) -> Iterable[Problem]:
    codes: set[str] = set()
    orders: set[int] = set()
    for j, attribute in enumerate(attributes):
        here: PathKey = (*path, "attributes", j)
        if attribute.code in codes:
            yield doc.at((*here, "code"), f"duplicate attribute code {attribute.code!r}")
        if attribute.order in orders:
            yield doc.at((*here, "order"), f"attribute order {attribute.order} is used twice")
        codes.add(attribute.code)
        orders.add(attribute.order)


def department_checks(doc: Doc, ctx: Context) -> Iterable[Problem]:
    model = doc.model
    assert isinstance(model, DepartmentFile)
    if problem := timezone_problem(model.timezone):
        yield doc.at(("timezone",), problem)
    yield from _route_checks(doc, model, ctx)
    yield from _field_checks(doc, model)
    yield from _status_checks(doc, model)
    if model.file_layout:
        yield from _layout_checks(doc, model)
    for key in model.extra:
        if _SECRET_WORDS.search(key):
            yield doc.at(
                ("extra", key),
                "looks like a secret: secrets belong in the "
                "environment or a secret file, never in a mapping",
                key=True,
            )


def _route_checks(doc: Doc, model: DepartmentFile, ctx: Context) -> Iterable[Problem]:
    for i, route in enumerate(model.routes):
        path: PathKey = ("routes", i)
        if ctx.catalogue_ok and route.service_code not in ctx.services:
            yield doc.at(
                (*path, "service_code"),
                f"service code {route.service_code!r} is not in the catalogue",
            )
        if route.department and route.department not in ctx.departments:
            yield doc.at(
                (*path, "department"),
                f"unknown department {route.department!r} "
                f"(known: {', '.join(sorted(ctx.departments))})",
            )
        if route.department and route.when is None:
            yield doc.at((*path, "department"), "a department override needs a `when` rule")
        for key in route.when or {}:
            if problem := case_path_problem(key):
                yield doc.at((*path, "when", key), problem, key=True)


def _field_checks(doc: Doc, model: DepartmentFile) -> Iterable[Problem]:
    for name, spec in model.fields.items():
        path: PathKey = ("fields", name)
        source = spec.source_path
        where = (*path, "lookup", "path") if spec.lookup else (*path, "path")
        if source is not None and (problem := case_path_problem(source)):
            yield doc.at(where, problem)
        if spec.lookup and spec.lookup.table not in model.lookups:
            yield doc.at((*path, "lookup", "table"), f"unknown lookup table {spec.lookup.table!r}")
        yield from _datetime_field_checks(doc, path, spec)


def _datetime_field_checks(doc: Doc, path: PathKey, spec: FieldSpec) -> Iterable[Problem]:
    if spec.format is None and spec.timezone is None:
        return
    if spec.path is None or not is_datetime_path(spec.path):
        key = "format" if spec.format is not None else "timezone"
        yield doc.at(
            (*path, key),
            "`format`/`timezone` apply only to datetime paths "
            f"({', '.join(sorted(DATETIME_FIELDS))}, attributes.*)",
            key=True,
        )
    if spec.format is not None and (problem := strftime_problem(spec.format)):
        yield doc.at((*path, "format"), problem)


def _status_checks(doc: Doc, model: DepartmentFile) -> Iterable[Problem]:
    for code, target in model.status_in.items():
        if target is not None and target.status not in CANONICAL:
            yield doc.at(
                ("status_in", code),
                f"{target.status!r} is neither a canonical status "
                f"({', '.join(sorted(CANONICAL))}) nor 'ignore'",
            )
    for canonical, code in model.status_out.items():
        path: PathKey = ("status_out", canonical)
        if canonical not in CANONICAL and canonical != "note":
            yield doc.at(path, f"unknown canonical status {canonical!r}", key=True)
        elif canonical not in OUTGOING:
            yield doc.at(
                path,
                f"{canonical!r} is a canonical status a department cannot "
                f"receive (the 311 side only sends {', '.join(OUTGOING)})",
                key=True,
            )
        if code not in model.status_in:
            yield doc.at(path, f"department status {code!r} is not declared in status_in")


def _layout_checks(doc: Doc, model: DepartmentFile) -> Iterable[Problem]:
    assert model.file_layout is not None
    for name in ("work_orders", "status_updates"):
        layout: CsvLayout | None = getattr(model.file_layout, name)
        if layout is None:
            continue
        path: PathKey = ("file_layout", name)
        yield from _csv_checks(doc, path, layout)
        if name == "work_orders":
            for j, column in enumerate(layout.columns):
                if column not in model.fields:
                    yield doc.at((*path, "columns", j), f"column {column!r} is not in `fields`")


def _csv_checks(doc: Doc, path: PathKey, layout: CsvLayout) -> Iterable[Problem]:
    try:
        codecs.lookup(layout.encoding)
    except LookupError:
        yield doc.at((*path, "encoding"), f"unknown encoding {layout.encoding!r}")
    if problem := strftime_problem(layout.date_format):
        yield doc.at((*path, "date_format"), problem)
    seen: set[str] = set()
    for j, column in enumerate(layout.columns):
        if column in seen:
            yield doc.at((*path, "columns", j), f"column {column!r} appears twice")
        seen.add(column)
    for role, column in layout.roles.items():
        if column not in seen:
            yield doc.at((*path, "roles", role), f"column {column!r} is not in `columns`")


# --------------------------------------------------------------------------- cross-file


def unrouted_service_checks(docs: list[Doc]) -> Iterable[Problem]:
    """Every catalogue service needs a route without `when`, or some cases go nowhere."""
    routed = {
        route.service_code
        for doc in docs
        if isinstance(doc.model, DepartmentFile)
        for route in doc.model.routes
        if not route.when
    }
    for doc in docs:
        if doc.target and isinstance(doc.model, CatalogueFile):
            for i, service in enumerate(doc.model.services):
                if service.service_code not in routed:
                    yield doc.at(
                        ("services", i, "service_code"),
                        "no department file routes this service without a `when` rule",
                    )


def duplicate_route_checks(docs: list[Doc]) -> Iterable[Problem]:
    """A service code routed twice with the same (or no) `when` rule, in any files."""
    owners: dict[tuple[str, str], list[tuple[Doc, int]]] = defaultdict(list)
    for doc in docs:
        if isinstance(doc.model, DepartmentFile):
            for i, route in enumerate(doc.model.routes):
                when = repr(sorted((route.when or {}).items()))
                owners[(route.service_code, when)].append((doc, i))
    for (code, _), places in owners.items():
        for n, (doc, i) in enumerate(places):
            others = [p for p in places if p != (doc, i)]
            if not doc.target or not others:
                continue
            if n == 0 and any(other.target for other, _ in others):
                continue  # reported at the later occurrence
            other, j = places[0] if n else others[0]
            yield doc.at(
                ("routes", i, "service_code"),
                f"service code {code!r} is routed "
                f"twice (also at {other.where(('routes', j))}) with the same `when`",
            )
