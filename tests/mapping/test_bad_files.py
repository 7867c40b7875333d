"""Each bad file yields exactly one problem, pointing at the offending line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.mapping import validate_paths

from .conftest import BAD

CASES = [
    ("syntax_error.yaml", 7, "(yaml)", "flow sequence started on line 6"),
    ("duplicate_key.yaml", 9, "status_in.New", "duplicate key (first defined on line 7)"),
    ("unknown_top_key.yaml", 8, "statuses_out", "unknown key (did you mean 'status_out'?)"),
    ("unknown_nested_key.yaml", 8, "routes[0].escalate_after", "unknown key (allowed:"),
    ("wrong_type.yaml", 7, "routes[0].sla_hours", "valid number"),
    ("unknown_status_in.yaml", 8, "status_in.FIXED", "'fixed' is neither a canonical status"),
    ("unknown_status_out.yaml", 10, "status_out.finished", "unknown canonical status"),
    (
        "status_out_not_receivable.yaml",
        11,
        "status_out.onsite",
        "a canonical status a department cannot receive",
    ),
    (
        "status_out_undeclared.yaml",
        10,
        "status_out.cancelled",
        "department status 'CANCEL' is not declared in status_in",
    ),
    ("unknown_service.yaml", 8, "routes[1].service_code", "'PTOHOLE' is not in the catalogue"),
    (
        "routed_twice_across_files.yaml",
        6,
        "routes[0].service_code",
        "routed twice (also at streets.yaml:5)",
    ),
    (
        "routed_twice_same_file.yaml",
        12,
        "routes[2].service_code",
        "routed twice (also at routed_twice_same_file.yaml:5)",
    ),
    ("unknown_department.yaml", 10, "routes[1].department", "unknown department 'parks'"),
    ("bad_field_path.yaml", 8, "fields.Location.path", "'adress_string' is not a Case field"),
    (
        "unknown_lookup_table.yaml",
        8,
        "fields.Priority.lookup.table",
        "unknown lookup table 'priority'",
    ),
    ("bad_strftime.yaml", 9, "fields.ReportedAt.format", "unknown strftime directive '%Q'"),
    ("bad_timezone.yaml", 3, "timezone", "unknown time zone 'America/Gotham'"),
    ("field_two_sources.yaml", 7, "fields.Source", "exactly one of `path`, `const` or `lookup`"),
    ("secret_in_extra.yaml", 10, "extra.api_token", "looks like a secret"),
    (
        "layout_unknown_column.yaml",
        12,
        "file_layout.work_orders.columns[1]",
        "column 'Adress' is not in `fields`",
    ),
    (
        "catalogue_duplicate_code.yaml",
        5,
        "services[1].service_code",
        "duplicate service code (first at catalogue_duplicate_code.yaml:2)",
    ),
    ("catalogue_bad_fee.yaml", 9, "services[1].fee.amount_cents", "valid integer (got 25.0)"),
    (
        "catalogue_unquoted_yes.yaml",
        14,
        "services[1].attributes[0].values[0].key",
        "quote the value",
    ),
]


def test_every_bad_file_has_a_case() -> None:
    assert {name for name, *_ in CASES} == {p.name for p in BAD.glob("*.yaml")}


@pytest.mark.parametrize(("name", "line", "field", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_file(context_dir: Path, name: str, line: int, field: str, message: str) -> None:
    path = BAD / name
    problems = validate_paths([path])
    assert [str(p) for p in problems] == [str(problems[0])], "expected exactly one problem"
    problem = problems[0]
    assert str(problem).startswith(f"{path}:{line}: {field}: ")
    assert (problem.file, problem.line, problem.field) == (str(path), line, field)
    assert message in problem.message
