"""`hub import` on every real record file: no crash, reasons for rejects, re-runs import 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from hub.cli import app
from hub.model import CaseStatus
from hub.services.importer import ImportService
from hub.services.runtime import Hub
from hub.store import tables as t
from hub.testing.generator import find_realworld_dir

REALWORLD = find_realworld_dir(Path(__file__).parent)
REPO = Path(__file__).resolve().parents[2]

FILES = [
    ("311_records/nyc/nyc311_2014-2019_export.csv", "nyc-csv"),
    ("311_records/nyc/nyc311_2016_brooklyn_cb06.csv", "nyc-csv"),
    ("311_records/nyc/nyc311_2012_socrata_api.json", "nyc-socrata-json"),
    ("311_records/nyc/nyc311_2024_socrata_api.json", "nyc-socrata-json"),
    ("311_records/boston/boston311_2025_open_cases.csv", "boston-csv"),
    ("311_records/boston/boston311-100.csv", "boston-csv"),
    ("311_records/sf/sf311_open311_2011_django_fixture.json", "open311-json"),
    ("open311/bloomington/bloomington_requests.json", "open311-json"),
    ("open311/sf/sf_requests.xml", "open311-xml"),
    ("open311/toronto/toronto_requests_many.xml", "open311-xml"),
]


@pytest.fixture
def env(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HUB_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("HUB_SQLITE_SYNCHRONOUS", "OFF")  # test speed; durability is not tested
    monkeypatch.chdir(REPO)
    return sqlite_url


def run(*args: str) -> dict:
    result = CliRunner().invoke(app, ["import", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_real_file_imports_and_reruns_as_duplicates(env: str) -> None:
    assert REALWORLD is not None
    for relative, fmt in FILES:
        path = str(REALWORLD / relative)
        first = run(path, "--format", fmt)
        assert first["read"] == first["imported"] + first["duplicates"] + first["rejected"]
        assert first["read"] > 0
        assert all(row["reason"] for row in first["rejected_rows"])
        assert sum(first["reasons"].values()) == first["rejected"]
        again = run(path, "--format", fmt)
        assert again["imported"] == 0, relative
        assert again["duplicates"] == first["imported"] + first["duplicates"]
        assert again["rejected"] == first["rejected"]


def test_dry_run_writes_nothing_and_limit(env: str) -> None:
    assert REALWORLD is not None
    path = str(REALWORLD / "311_records/boston/boston311-100.csv")
    dry = run(path, "--dry-run", "--limit", "40")
    assert dry["read"] == 40 and dry["dry_run"] and dry["imported"] > 0
    hub = Hub(database=env)
    with hub.uow() as uow:
        assert uow.cases.count() == 0
    hub.dispose()
    assert run(path, "--limit", "40")["imported"] == dry["imported"]


def test_progress_and_table_output(env: str) -> None:
    assert REALWORLD is not None
    path = str(REALWORLD / "311_records/boston/boston311-100.csv")
    result = CliRunner().invoke(app, ["import", path])
    assert result.exit_code == 0, result.output
    assert "imported 58" in result.stdout and "rejected because" in result.stdout
    hub = Hub(database=env)
    seen: list[int] = []
    summary = ImportService(hub).run(Path(path), progress=seen.append, batch_size=30)
    assert seen == [30, 30, 30, 10] and summary.duplicates == 58
    hub.dispose()


def test_wrong_format_and_unsafe_xml(env: str, tmp_path: Path) -> None:
    assert REALWORLD is not None
    path = str(REALWORLD / "311_records/boston/boston311-100.csv")
    result = CliRunner().invoke(app, ["import", path, "--format", "nyc-csv"])
    assert result.exit_code == 2 and "looks like boston-csv" in " ".join(result.output.split())
    bomb = tmp_path / "bomb.xml"
    bomb.write_bytes(
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;">]><service_requests><request>'
        b"<service_code>&b;</service_code></request></service_requests>"
    )
    result = CliRunner().invoke(app, ["import", str(bomb), "--format", "open311-xml"])
    assert result.exit_code == 2 and "DOCTYPE" in " ".join(result.output.split())


def test_records_closed_at_the_source_are_history_never_dispatched(env: str) -> None:
    assert REALWORLD is not None
    path = str(REALWORLD / "311_records/nyc/nyc311_2014-2019_export.csv")
    summary = run(path)
    assert 0 < summary["closed_not_dispatched"] < summary["imported"]
    hub = Hub(database=env)
    with hub.uow() as uow:
        ids = list(uow.connection.execute(select(t.cases.c.hub_id)).scalars())
        rows = list(uow.cases.get_many(ids).values())
        queued = set(uow.connection.execute(select(t.outbox.c.case_id)).scalars())
        finished = [r for r in rows if r.attributes.get("source_status") == "Closed"]
        still_open = [r for r in rows if r.attributes.get("source_status") != "Closed"]
        assert len(finished) == summary["closed_not_dispatched"]
        assert {r.status for r in finished} == {CaseStatus.CLOSED}
        assert not queued & {r.hub_id for r in finished}  # nothing for a department to do
        assert {r.hub_id for r in still_open} <= queued  # open ones are routed as usual
        kinds = [e.kind for e in uow.timeline.for_case(finished[0].hub_id)]
    assert kinds == ["imported_finished"]
    hub.dispose()
    again = run(path)
    assert again["imported"] == again["closed_not_dispatched"] == 0
