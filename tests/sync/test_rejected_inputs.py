"""Rejected department inputs (a bad file, an unreadable record): the adapter classifies
them on its StatusPage; status sync counts, logs and carries them, and applies nothing
from them. Through a fake page (publicworks) and through the real sanitation adapter's
quarantine, with `hub sync` and the scheduler's job record, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from adapters.sanitation.adapter import FileStatusPage, QuarantineNote
from hub.adapters import RejectedInput, StatusPage
from hub.cli import app
from hub.model import CaseStatus
from hub.observability.metrics import REGISTRY
from hub.services.dispatch import Dispatcher
from hub.services.scheduler import Scheduler
from hub.services.sync import StatusSync, SyncResult
from hub.store import tables as t
from tests.services.test_sanitation_delivery import sanitation_cases
from tests.sync.conftest import make_hub, sim
from tests.sync.test_status_in import delivered_cases

pytestmark = pytest.mark.timeout(120)
METRIC = "hub_status_inputs_rejected_total"
SYNC_LOGGER = "hub.services.sync"
HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>\r\n"
STATUS_HEADER = "CompletedAt,Status,CaseRef,ContractorRef,ReasonCode,Notes,PhotoUrl\r\n"


def rejected_count(department: str, kind: str) -> float:
    return REGISTRY.get_sample_value(METRIC, {"department": department, "kind": kind}) or 0.0


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SYNC_LOGGER and r.levelno == logging.WARNING]


# --------------------------------------------------------------------------- the port


def test_quarantine_notes_are_rejected_inputs_dumped_once() -> None:
    note = QuarantineNote(
        department="sanitation",
        source="COMPLETIONS_1.csv",
        kind="bad_file",
        reason="truncated",
        digest="ab" * 32,
        quarantined_as="20260101T000000000000Z_COMPLETIONS_1.csv",
    )
    other = RejectedInput(
        department="sanitation", source="r-9", kind="malformed_record", reason="x"
    )
    page = FileStatusPage(events=[], quarantined=[note], rejected=[other])
    assert page.rejected == [other, note] and page.quarantined == [note]
    assert (note.file, note.sha256) == ("COMPLETIONS_1.csv", "ab" * 32)
    dumped = page.model_dump(mode="json")
    assert "quarantined" not in dumped  # one list, no copy of it
    assert dumped["rejected"][1]["quarantined_as"] == note.quarantined_as  # subclass fields kept
    assert StatusPage(events=[]).rejected == []


@pytest.mark.parametrize("kind", ["", "Bad File", "bad-file", "x" * 33, "1st"])
def test_a_kind_is_a_short_label_not_free_text(kind: str) -> None:
    with pytest.raises(ValidationError):
        RejectedInput(department="d", source="f.csv", kind=kind, reason="r")


def test_sync_results_add_up_rejected_inputs() -> None:
    first = SyncResult("d", "poll", received=2, rejected=1)
    total = first.merge(SyncResult("d", "poll", received=1, rejected=2))
    assert (total.received, total.rejected) == (3, 3) and total.as_dict()["rejected"] == 3


# --------------------------------------------------------------------------- a fake page


async def test_rejected_inputs_are_counted_logged_and_never_applied(
    city, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, _cases, orders = await delivered_cases(city, 2)
    (closed_id, closed), (other_id, other) = orders.items()
    sim(city).advance(2, close=True)
    adapter = hub.adapter("publicworks")
    events = await adapter.get_status([closed.external_id])
    assert events and all(e.external_id == closed.external_id for e in events)

    def refused(source: str, kind: str) -> RejectedInput:
        return RejectedInput(department="publicworks", source=source, kind=kind, reason="bad")

    # The second case's record comes back unreadable: named by its id, it must not move.
    pages = [
        StatusPage(
            events=events,
            next_watermark=datetime.now(UTC),
            more=True,
            rejected=[refused(str(other.external_id), "malformed_record")],
        ),
        StatusPage(
            events=[],
            rejected=[refused("export-1.json", "bad_file"), refused("export-2.json", "bad_file")],
        ),
    ]
    calls: list[datetime] = []

    async def two_pages(since: datetime) -> StatusPage:
        calls.append(since)
        return pages[len(calls) - 1]

    monkeypatch.setattr(adapter, "poll_changes", two_pages)
    before = {k: rejected_count("publicworks", k) for k in ("malformed_record", "bad_file")}
    caplog.set_level(logging.WARNING, logger=SYNC_LOGGER)

    result = await StatusSync(hub).poll("publicworks")

    assert len(calls) == 2, "the rejected inputs stopped the paging"
    assert result.rejected == 3 and result.as_dict()["rejected"] == 3
    assert result.outcomes["applied"] >= 1 and result.received == len(events)
    assert rejected_count("publicworks", "malformed_record") - before["malformed_record"] == 1
    assert rejected_count("publicworks", "bad_file") - before["bad_file"] == 2
    logged = warnings(caplog)
    assert [(r.department, r.kind, r.source) for r in logged] == [
        ("publicworks", "malformed_record", other.external_id),
        ("publicworks", "bad_file", "export-1.json"),
        ("publicworks", "bad_file", "export-2.json"),
    ]
    with hub.uow() as uow:
        assert uow.cases.get(closed_id).status is CaseStatus.RESOLVED
        assert not uow.cases.get(other_id).status.is_final
        inbound = uow.connection.execute(
            t.inbound_events.select().where(t.inbound_events.c.external_id == other.external_id)
        ).all()
    assert inbound == [], "a rejected input became an inbound event"
    await hub.aclose()


# --------------------------------------------------------------------------- sanitation


async def test_bad_contractor_files_reach_metrics_logs_cli_and_job_runs(
    city, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub(city)
    cases = sanitation_cases(hub, 3, seed=5)
    await Dispatcher(hub, worker_id="rejected-test").run(until_empty=True, timeout=60)
    contractor = city.simulator("sanitation")
    closed = {r["CaseRef"] for r in contractor.advance(2, close=True)}
    [open_id] = [c.hub_id for c in cases if c.hub_id not in closed]
    inbound = contractor.root / "inbound"
    [good_name] = [p.name for p in inbound.iterdir() if p.name.startswith("COMPLETIONS_")]
    good = (inbound / good_name).read_bytes()
    # A closure of the open case cut mid-upload: its one row parses, the file does not.
    when = datetime.now(UTC).strftime("%d/%m/%Y %H:%M")
    cut = f'{STATUS_HEADER}"{when}",COLLECTED,"{open_id}",00000099,,Done,\r\n'.encode()
    bad = {
        "COMPLETIONS_html.csv": HTML,
        "COMPLETIONS_cut.csv": cut.rstrip(b"\r\n"),
        "notes.txt": b"hello\n",
        "COMPLETIONS $(id).csv": good,
    }
    for name, data in bad.items():
        (inbound / name).write_bytes(data)
    kinds = ("bad_file", "unexpected_file", "unsafe_name", "duplicate_file")
    before = {k: rejected_count("sanitation", k) for k in kinds}
    caplog.set_level(logging.WARNING, logger=SYNC_LOGGER)

    # 1. A scheduled poll.
    assert await Scheduler(hub, worker_id="rejected-test", poll_interval=3600).poll("sanitation")
    logged = {r.source: r.kind for r in warnings(caplog) if r.department == "sanitation"}
    assert logged.pop("COMPLETIONS_html.csv") == logged.pop("COMPLETIONS_cut.csv") == "bad_file"
    assert logged.pop("notes.txt") == "unexpected_file"
    [(unsafe, kind)] = logged.items()
    assert kind == "unsafe_name" and unsafe.startswith("unsafe-name-")  # never the raw name
    assert "Bad Gateway" not in caplog.text and open_id not in caplog.text  # no content
    with hub.uow() as uow:
        assert all(uow.cases.get(c).status.is_final for c in closed)
        assert not uow.cases.get(open_id).status.is_final  # the cut file applied nothing

    # 2. The contractor resends the good file: `hub sync` shows the duplicate.
    (inbound / "COMPLETIONS_again.csv").write_bytes(good)
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump(city.config_dict()))
    env = {"HUB_DATABASE_URL": city.database_url}
    args = ["sync", "-c", str(config), "-d", "sanitation"]
    done = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--json"], env=env)
    assert done.exit_code == 0, done.output
    [row] = json.loads(done.stdout)
    assert row["rejected"] == 1 and row["applied"] == 0 and "duplicate" in row
    (inbound / "COMPLETIONS_html_2.csv").write_bytes(HTML)
    done = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
    assert done.exit_code == 0 and "rejected department inputs" in done.output, done.output

    after = {k: rejected_count("sanitation", k) - before[k] for k in kinds}
    assert after == {"bad_file": 3, "unexpected_file": 1, "unsafe_name": 1, "duplicate_file": 1}
    with hub.uow() as uow:
        assert not uow.cases.get(open_id).status.is_final
    await hub.aclose()
