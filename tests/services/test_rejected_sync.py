"""Status sync keeps what an adapter rejected: each input stored once in rejected_inputs
(redacted, never the content), even when the page's events fail to apply; reconciliation,
which reads the same pages, stores them too; `hub departments status` and
`hub departments rejected` show them. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hub.adapters import RejectedInput, StatusPage
from hub.cli import app
from hub.observability.metrics import REGISTRY
from hub.services.reconcile import Reconciler
from hub.services.runtime import Hub
from hub.services.sync import StatusSync
from hub.testing.harness import SimulatedCity
from tests.services.conftest import feed

pytestmark = pytest.mark.timeout(120)
DEPT = "publicworks"
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
METRIC = "hub_status_inputs_rejected_total"


def refused(source: str, kind: str = "bad_file", reason: str = "truncated") -> RejectedInput:
    return RejectedInput(department=DEPT, source=source, kind=kind, reason=reason)


def serve_pages(hub: Hub, monkeypatch: pytest.MonkeyPatch, *pages: StatusPage) -> list[datetime]:
    """The department answers each poll_changes with the next page, then empty pages."""
    calls: list[datetime] = []

    async def poll_changes(since: datetime) -> StatusPage:
        calls.append(since)
        return pages[len(calls) - 1] if len(calls) <= len(pages) else StatusPage(events=[])

    monkeypatch.setattr(hub.adapter(DEPT), "poll_changes", poll_changes)
    return calls


def metric(kind: str) -> float:
    return REGISTRY.get_sample_value(METRIC, {"department": DEPT, "kind": kind}) or 0.0


@pytest.fixture
def hub(city: SimulatedCity) -> Iterator[Hub]:
    hub = city.hub()
    yield hub
    asyncio.run(hub.aclose())


# --------------------------------------------------------------------------- status sync


def test_a_poll_stores_each_rejected_input_once(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    page = StatusPage(
        events=[],
        rejected=[
            refused("export-1.json"),
            # A reason quoting what the adapter read: stored as the logs show it.
            refused("r-9", "malformed_record", "bad contact jane.doe@example.org 617-555-0123"),
        ],
    )
    serve_pages(hub, monkeypatch, page, page)  # the second poll sees the same two again
    now = [NOW]
    sync = StatusSync(hub, clock=lambda: now[0])
    before = metric("bad_file")

    first = asyncio.run(sync.poll(DEPT))
    now[0] = NOW + timedelta(minutes=5)
    second = asyncio.run(sync.poll(DEPT))

    assert first.rejected == second.rejected == 2  # every sighting is reported and counted
    assert metric("bad_file") - before == 2
    with hub.uow() as uow:
        entries = uow.rejected.recent(DEPT)
        summary = uow.rejected.summary(NOW + timedelta(hours=1))[DEPT]
    assert sorted(e.source for e in entries) == ["export-1.json", "r-9"]  # stored once
    assert {e.received_at for e in entries} == {NOW}  # the sync's clock, first sighting
    [record] = [e for e in entries if e.kind == "malformed_record"]
    assert "jane.doe" not in record.reason and "555-0123" not in record.reason
    assert "[email]" in record.reason and "[phone]" in record.reason
    assert (summary.total, summary.last_24h) == (2, 2)


def test_rejected_inputs_are_kept_when_the_page_fails_to_apply(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_pages(hub, monkeypatch, StatusPage(events=[], rejected=[refused("export-7.json")]))
    sync = StatusSync(hub, clock=lambda: NOW)

    def broken_apply(*args, **kwargs):
        raise RuntimeError("database went away mid-page")

    monkeypatch.setattr(sync, "apply", broken_apply)
    with pytest.raises(RuntimeError, match="mid-page"):
        asyncio.run(sync.poll(DEPT))
    with hub.uow() as uow:
        assert [e.source for e in uow.rejected.recent(DEPT)] == ["export-7.json"]


def test_reconcile_stores_what_its_department_reads_rejected(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed(hub, 1)  # a work order: reconciliation reads the changes since the oldest one
    calls = serve_pages(
        hub, monkeypatch, StatusPage(events=[], rejected=[refused("export-9.json")])
    )
    asyncio.run(Reconciler(hub, clock=lambda: NOW).department(DEPT))
    assert calls, "reconciliation did not read the department's changes"
    with hub.uow() as uow:
        assert [e.source for e in uow.rejected.recent(DEPT)] == ["export-9.json"]


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli(city: SimulatedCity, tmp_path: Path) -> Iterator[tuple[CliRunner, list[str], dict]]:
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump(city.config_dict()))
    yield CliRunner(), ["-c", str(config)], {"HUB_DATABASE_URL": city.database_url}


def test_departments_status_shows_rejected_inputs(hub: Hub, cli, monkeypatch) -> None:
    runner, config, env = cli
    now = datetime.now(UTC)
    with hub.uow() as uow:
        uow.rejected.record(DEPT, [refused("old.json", reason="html")], now - timedelta(days=2))
        uow.rejected.record(DEPT, [refused("a.json"), refused("b.json")], now - timedelta(hours=2))
        uow.rejected.record(
            DEPT, [refused("c.json", reason="empty file")], now - timedelta(hours=1)
        )
        uow.commit()

    done = runner.invoke(app, ["departments", "status", *config, "--json"], env=env)
    assert done.exit_code == 0, done.output
    rows = {r["department"]: r for r in json.loads(done.stdout)}
    publicworks, other = rows.pop(DEPT), rows.popitem()[1]
    assert publicworks["rejected_24h"] == 3 and publicworks["rejected_total"] == 4
    assert publicworks["last_rejected_reason"] == "empty file"
    assert datetime.fromisoformat(publicworks["last_rejected_at"]) == now - timedelta(hours=1)
    assert publicworks["queue_depth"] == 0 and "dead_letters" in publicworks  # kept as were
    assert (other["rejected_24h"], other["rejected_total"], other["last_rejected_at"]) == (
        0,
        0,
        None,
    )

    monkeypatch.setenv("COLUMNS", "160")
    table = runner.invoke(app, ["departments", "status", *config], env=env)
    assert table.exit_code == 0, table.output
    assert "rejected 24h" in table.output
    [line] = [x for x in table.output.splitlines() if DEPT in x]
    assert [c.strip() for c in line.strip("│ ").split("│")][-1] == "3"


def test_departments_rejected_lists_the_latest(hub: Hub, cli, monkeypatch) -> None:
    runner, config, env = cli
    with hub.uow() as uow:
        uow.rejected.record(DEPT, [refused("a.json")], NOW)
        uow.rejected.record(DEPT, [refused("r-1", "malformed_record", "[email] in id")], NOW)
        uow.rejected.record(DEPT, [refused("b.json", reason="empty")], NOW + timedelta(hours=1))
        uow.commit()

    done = runner.invoke(
        app, ["departments", "rejected", DEPT, *config, "--json", "--limit", "2"], env=env
    )
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)
    assert [(r["source"], r["reason"]) for r in rows] == [
        ("b.json", "empty"),
        ("r-1", "[email] in id"),
    ]
    assert rows[0]["digest"] is None and rows[0]["received_at"].startswith("2026-05-01T13:00")

    monkeypatch.setenv("COLUMNS", "160")
    table = runner.invoke(app, ["departments", "rejected", DEPT, *config], env=env)
    assert table.exit_code == 0, table.output
    assert "a.json" in table.output and "[email] in id" in table.output  # not read as markup

    empty = runner.invoke(app, ["departments", "rejected", "sanitation", *config], env=env)
    assert empty.exit_code == 0 and "no rejected inputs recorded" in empty.output


def test_departments_rejected_refuses_bad_input(cli) -> None:
    runner, config, env = cli
    unknown = runner.invoke(app, ["departments", "rejected", "parks", *config], env=env)
    assert unknown.exit_code == 2 and "unknown department 'parks'" in unknown.output
    zero = runner.invoke(app, ["departments", "rejected", DEPT, *config, "--limit", "0"], env=env)
    assert zero.exit_code == 2
