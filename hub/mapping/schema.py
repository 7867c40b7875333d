"""Pydantic models of the mapping files: structure and types only.

Semantic and cross-file checks (known statuses, known service codes, Case paths, time
zones…) live in `checks.py`, where they can report the exact line of the offending item.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    model_validator,
)

from hub.model import Priority


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


NonEmpty = Annotated[str, Field(min_length=1)]
Scalar = str | int | float | bool

# --------------------------------------------------------------------------- catalogue


class Fee(_Strict):
    amount_cents: Annotated[StrictInt, Field(gt=0)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"


class AttributeValue(_Strict):
    key: StrictStr | StrictInt  # unquoted yes/no would be a YAML boolean
    name: NonEmpty


Datatype = Literal["string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"]


class ServiceAttribute(_Strict):
    """An Open311 service-definition attribute."""

    code: NonEmpty
    datatype: Datatype
    required: bool = False
    variable: bool = True
    datatype_description: str | None = None
    order: Annotated[StrictInt, Field(ge=1)]
    description: NonEmpty
    values: list[AttributeValue] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_match_datatype(self) -> ServiceAttribute:
        is_list = self.datatype in ("singlevaluelist", "multivaluelist")
        if is_list and not self.values:
            raise ValueError(f"a {self.datatype} attribute needs `values`")
        if not is_list and self.values:
            raise ValueError(f"`values` only apply to list datatypes, not {self.datatype}")
        return self


class ServiceDefinition(_Strict):
    service_code: Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9_-]*$")]
    service_name: NonEmpty
    description: str = ""
    group: NonEmpty
    keywords: list[str] = Field(default_factory=list)
    type: Literal["realtime", "batch", "blackbox"] = "realtime"
    fee: Fee | None = None
    aliases: list[NonEmpty] = Field(default_factory=list)
    attributes: list[ServiceAttribute] = Field(default_factory=list)

    @property
    def metadata(self) -> bool:
        """Open311 `metadata`: true when the service has a definition to fetch."""
        return bool(self.attributes)

    def attribute(self, code: str) -> ServiceAttribute | None:
        return next((a for a in self.attributes if a.code == code), None)


class CatalogueFile(_Strict):
    services: list[ServiceDefinition]


# --------------------------------------------------------------------------- departments

WhenValue = Scalar | list[Scalar]


class RouteRule(_Strict):
    service_code: NonEmpty
    work_order_type: NonEmpty
    priority: Priority = Priority.NORMAL
    sla_hours: Annotated[float, Field(gt=0)]
    team: str | None = None
    department: str | None = None  # send to another known department
    when: dict[str, WhenValue] | None = None


class LookupRef(_Strict):
    table: NonEmpty
    path: NonEmpty


class FieldSpec(_Strict):
    """How one department payload field is filled from a case."""

    path: str | None = None
    const: Any = None
    lookup: LookupRef | None = None
    default: Any = None
    format: str | None = None
    timezone: Literal["department", "UTC"] | None = None
    required: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        sources = [
            name
            for name in ("path", "const", "lookup")
            if name in self.model_fields_set and getattr(self, name) is not None
        ]
        if len(sources) != 1:
            raise ValueError("give exactly one of `path`, `const` or `lookup`")
        return self

    @property
    def source_path(self) -> str | None:
        return self.path if self.path is not None else (self.lookup.path if self.lookup else None)


def _status_target(value: Any) -> Any:
    """`FIXED: resolved` is shorthand for `FIXED: {status: resolved}`; `ignore` -> None."""
    if value == "ignore":
        return None
    return {"status": value} if isinstance(value, str) else value


class StatusTarget(_Strict):
    status: NonEmpty
    closure_reason: str | None = None


StatusInValue = Annotated[StatusTarget | None, BeforeValidator(_status_target)]


class CsvLayout(_Strict):
    """A contractor file: column order, encoding and formats."""

    filename: NonEmpty
    columns: Annotated[list[NonEmpty], Field(min_length=1)]
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    encoding: NonEmpty = "utf-8"
    date_format: NonEmpty = "%Y-%m-%d %H:%M"
    header: bool = True
    quoting: Literal["minimal", "all", "nonnumeric"] = "minimal"
    line_terminator: Literal["\n", "\r\n"] = "\r\n"
    # status files only: which column carries what (reference, status, occurred_at, ...)
    roles: dict[str, str] = Field(default_factory=dict)


class FileLayout(_Strict):
    work_orders: CsvLayout | None = None
    status_updates: CsvLayout | None = None


class DepartmentFile(_Strict):
    department: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    adapter: NonEmpty
    timezone: NonEmpty
    description: str = ""
    routes: list[RouteRule] = Field(default_factory=list)
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    lookups: dict[str, dict[str, Scalar]] = Field(default_factory=dict)
    status_in: Annotated[dict[str, StatusInValue], Field(min_length=1)]
    status_out: dict[str, NonEmpty] = Field(default_factory=dict)
    file_layout: FileLayout | None = None
    extra: dict[str, Any] = Field(default_factory=dict)  # adapter-specific, never secrets
