"""Validation of whole directories, single files with context, and loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.mapping import MappingError, Problem, load_mappings, validate_paths
from hub.model import Case

from .conftest import SHIPPED


def test_shipped_mappings_validate_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_MAPPINGS_DIR", str(SHIPPED))
    assert validate_paths(None) == []
    assert validate_paths([SHIPPED / "sanitation.yaml"]) == []


def test_default_directory_is_cwd_mappings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUB_MAPPINGS_DIR", raising=False)
    monkeypatch.chdir(SHIPPED.parent)
    assert validate_paths(None) == []


def test_problem_format() -> None:
    problem = Problem("m/a.yaml", 3, "routes[0].team", "bad")
    assert str(problem) == "m/a.yaml:3: routes[0].team: bad"


def test_edited_copy_replaces_its_department(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validating a candidate publicworks.yaml elsewhere does not clash with the shipped one."""
    monkeypatch.setenv("HUB_MAPPINGS_DIR", str(SHIPPED))
    candidate = tmp_path / "publicworks.yaml"
    text = (SHIPPED / "publicworks.yaml").read_text()
    candidate.write_text(text.replace("sla_hours: 72\n", "sla_hours: 48\n", 1))
    assert validate_paths([candidate]) == []


def test_new_department_clashing_with_shipped_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_MAPPINGS_DIR", str(SHIPPED))
    new = tmp_path / "streetlights.yaml"
    new.write_text(
        "department: streetlights\nadapter: streetlights\ntimezone: America/New_York\n"
        "routes:\n  - {service_code: STRLGHT, work_order_type: LIGHT-OUT, sla_hours: 72}\n"
        "status_in:\n  NEW: in_queue\n"
    )
    [problem] = validate_paths([new])
    assert str(problem).startswith(f"{new}:5: routes[0].service_code: ")
    assert "also at publicworks.yaml:" in problem.message


def test_missing_key_and_non_mapping(context_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        "department: bad\nadapter: bad\ntimezone: UTC\nroutes:\n"
        "  - service_code: STRLGHT\n    work_order_type: SL\nstatus_in: {New: in_queue}\n"
    )
    listing = tmp_path / "listing.yaml"
    listing.write_text("- department: bad\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    problems = [str(p) for p in validate_paths([missing, listing, empty])]
    assert problems == [
        f"{empty}:1: (file): file is empty",
        f"{listing}:1: (file): a mapping file must be a YAML mapping (key: value)",
        f"{missing}:5: routes[0].sla_hours: required key is missing",
    ]


def test_when_key_must_be_a_case_path(context_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "when.yaml"
    bad.write_text(
        "department: bad\nadapter: bad\ntimezone: UTC\nroutes:\n"
        "  - {service_code: STRLGHT, work_order_type: SL, sla_hours: 4,\n"
        "     when: {location.ward: '3'}}\nstatus_in: {New: in_queue}\n"
    )
    assert [str(p) for p in validate_paths([bad])] == [
        f"{bad}:6: routes[0].when.location.ward: 'location.ward' is not a Case field"
    ]


def test_catalogue_service_without_route(context_dir: Path) -> None:
    catalogue = context_dir / "catalogue.yaml"
    catalogue.write_text(
        catalogue.read_text() + "  - {service_code: NOISE, "
        "service_name: Residential Noise, group: Nuisance}\n"
    )
    problems = [str(p) for p in validate_paths(None)]
    assert (
        f"{catalogue}:4: services[2].service_code: no department file routes this "
        "service without a `when` rule" in problems
    )


def test_load_refuses_invalid_directory(context_dir: Path) -> None:
    streets = context_dir / "streets.yaml"
    streets.write_text(
        "department: streets\nadapter: streets\ntimezone: Mars/Base\n"
        "routes:\n  - {service_code: POTHOLE, work_order_type: PH, sla_hours: 1}\n"
        "  - {service_code: STRLGHT, work_order_type: SL, sla_hours: 1}\n"
        "status_in: {New: done}\n"
    )
    with pytest.raises(MappingError) as info:
        load_mappings(context_dir)
    assert [(p.file, p.line, p.field) for p in info.value.problems] == [
        (str(streets), 3, "timezone"),
        (str(streets), 7, "status_in.New"),
    ]
    assert f"{streets}:3: timezone: unknown time zone 'Mars/Base'" in str(info.value)


def test_load_uses_env_directory(context_dir: Path) -> None:
    (context_dir / "lights.yaml").write_text(
        "department: lights\nadapter: streets\ntimezone: America/Chicago\n"
        "routes:\n  - {service_code: STRLGHT, work_order_type: SL, sla_hours: 8, team: B}\n"
        "status_in: {DONE: {status: resolved, closure_reason: fixed}}\n"
    )
    loaded = load_mappings()
    assert set(loaded.departments) == {"streets", "lights"}
    route = loaded.route(Case(service_code="STRLGHT"))
    assert route is not None and (route.department, route.team) == ("lights", "B")
    assert str(loaded.departments["lights"].local_timezone) == "America/Chicago"


def test_anchors_merge_and_keep_explicit_lines(context_dir: Path, tmp_path: Path) -> None:
    merged = tmp_path / "merged.yaml"
    merged.write_text(
        "department: bad\nadapter: bad\ntimezone: UTC\n"
        "x-light: &light\n  service_code: STRLGHT\n  work_order_type: SL\n  sla_hours: 48\n"
        "routes:\n  - <<: *light\n    when: {attributes.condition: out}\n"
        "  - <<: *light\n    sla_hours: soon\n"
        "status_in: {New: in_queue}\n"
    )
    [problem] = validate_paths([merged])
    assert str(problem).startswith(f"{merged}:12: routes[1].sla_hours: ")


def test_alias_clash_and_duplicate_department(context_dir: Path) -> None:
    catalogue = context_dir / "catalogue.yaml"
    catalogue.write_text(
        catalogue.read_text().replace(
            "group: Streets}\n", "group: Streets, aliases: [street light out]}\n", 1
        )
    )
    twin = context_dir / "streets_copy.yaml"
    twin.write_text((context_dir / "streets.yaml").read_text().replace("POTHOLE", "STRLGHT"))
    problems = [str(p) for p in validate_paths(None)]
    assert problems == [
        f"{catalogue}:3: services[1].service_name: name 'Street Light Out' already belongs "
        f"to POTHOLE ({catalogue.name}:2)",
        f"{twin}:1: department: department 'streets' is already defined in streets.yaml:1",
    ]


def test_broken_catalogue_does_not_cascade(context_dir: Path) -> None:
    catalogue = context_dir / "catalogue.yaml"
    catalogue.write_text(catalogue.read_text() + "  - {service_code: bad code, group: g}\n")
    problems = validate_paths(None)
    assert {p.file for p in problems} == {str(catalogue)}
    assert {p.field for p in problems} == {"services[2].service_code", "services[2].service_name"}
