"""Declarative department mappings: the service catalogue, routes, payload fields and
status vocabularies, loaded from `mappings/*.yaml` and validated with file and line."""

from hub.mapping.engine import (
    DepartmentMapping,
    MappingSet,
    StatusMapping,
    load_mappings,
    lookup_path,
)
from hub.mapping.problems import MappingError, PayloadError, Problem, UnmappedStatus
from hub.mapping.schema import (
    CsvLayout,
    Fee,
    FieldSpec,
    FileLayout,
    RouteRule,
    ServiceAttribute,
    ServiceDefinition,
)
from hub.mapping.validate import mappings_dir, validate_paths

__all__ = [
    "CsvLayout",
    "DepartmentMapping",
    "Fee",
    "FieldSpec",
    "FileLayout",
    "MappingError",
    "MappingSet",
    "PayloadError",
    "Problem",
    "RouteRule",
    "ServiceAttribute",
    "ServiceDefinition",
    "StatusMapping",
    "UnmappedStatus",
    "load_mappings",
    "lookup_path",
    "mappings_dir",
    "validate_paths",
]
