"""Fixtures for mapping tests: the shipped mappings and a tiny context directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.mapping import MappingSet, load_mappings

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "mappings"
BAD = Path(__file__).resolve().parent / "bad"

CONTEXT_CATALOGUE = """\
services:
  - {service_code: POTHOLE, service_name: Pothole, group: Streets}
  - {service_code: STRLGHT, service_name: Street Light Out, group: Streets}
"""
CONTEXT_STREETS = """\
department: streets
adapter: streets
timezone: America/New_York
routes:
  - {service_code: POTHOLE, work_order_type: PH, sla_hours: 72}
status_in:
  New: in_queue
"""


@pytest.fixture(scope="session")
def mappings() -> MappingSet:
    return load_mappings(SHIPPED)


@pytest.fixture
def context_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A two-file mappings directory (catalogue + `streets`) used as validation context."""
    directory = tmp_path / "mappings"
    directory.mkdir()
    (directory / "catalogue.yaml").write_text(CONTEXT_CATALOGUE)
    (directory / "streets.yaml").write_text(CONTEXT_STREETS)
    monkeypatch.setenv("HUB_MAPPINGS_DIR", str(directory))
    return directory
