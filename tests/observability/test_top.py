"""`hub top --once` and `hub departments status` (the --json output only ever grows)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hub.adapters import RejectedInput
from hub.cli import app
from hub.observability.top import age
from hub.services.dispatch import Dispatcher
from hub.store.repository import DepartmentHealth
from hub.testing.harness import SimulatedCity, simulated_city
from tests.services.conftest import feed

runner = CliRunner()


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedCity]:
    with simulated_city(tmp_path / "city", gis=False, payments=False) as city:
        config = tmp_path / "hub.yaml"
        config.write_text(yaml.safe_dump(city.config_dict()))
        monkeypatch.setenv("HUB_DATABASE_URL", city.database_url)
        monkeypatch.setenv("HUB_CONFIG", str(config))
        yield city


def test_hub_top_once_renders_departments_queues_and_circuits(
    configured: SimulatedCity, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = configured.hub()
    feed(hub, 3)
    asyncio.run(Dispatcher(hub, worker_id="top-test").run(until_empty=True, timeout=30))
    feed(hub, 2, seed=9)  # queued, not delivered
    now = datetime.now(UTC)
    bad = [RejectedInput(department="sanitation", source=f"C_{n}.csv", kind="bad_file",
                         reason="truncated") for n in range(3)]  # fmt: skip
    with hub.uow() as uow:
        uow.departments.put(DepartmentHealth("codeenforcement", circuit="open"))
        uow.rejected.record("sanitation", bad[:2], now - timedelta(hours=1))
        uow.rejected.record("sanitation", bad[2:], now - timedelta(days=2))  # not the last day
        uow.commit()
    asyncio.run(hub.aclose())

    monkeypatch.setenv("COLUMNS", "160")
    result = runner.invoke(app, ["top", "--once", "--interval", "60"])
    assert result.exit_code == 0, result.output
    out = result.output
    for heading in ("department", "circuit", "queue", "due", "dead", "oldest due", "sync lag"):
        assert heading in out
    assert "rejected" in out  # "rejected 24h", wrapped or not
    [row] = [line for line in out.splitlines() if "publicworks" in line]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:5] == ["publicworks", "open", "closed", "2", "2"]
    assert float(cells[8]) == pytest.approx(3 / 60, abs=0.05)  # 3 attempts in the window
    assert cells[11] == "0"  # rejected in the last 24 hours
    ce = next(line for line in out.splitlines() if "codeenforcement" in line)
    assert [c.strip() for c in ce.strip("│ ").split("│")][2] == "open"
    sanitation = next(line for line in out.splitlines() if "sanitation" in line)
    assert [c.strip() for c in sanitation.strip("│ ").split("│")][11] == "2"


def test_watch_redraws_until_ctrl_c(
    configured: SimulatedCity, monkeypatch: pytest.MonkeyPatch
) -> None:
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("hub.observability.top.time.sleep", sleep)
    result = runner.invoke(app, ["departments", "status", "--watch", "--interval", "0.5"])
    assert result.exit_code == 0, result.output
    assert naps == [0.5, 0.5] and "publicworks" in result.output


def test_departments_status_json_keeps_its_keys(configured: SimulatedCity) -> None:
    feed(configured.hub(), 2)
    rows = json.loads(runner.invoke(app, ["departments", "status", "--json"]).output)
    [pw] = [r for r in rows if r["department"] == "publicworks"]
    assert set(pw) == {
        "department", "state", "circuit", "pause_reason", "queue_depth", "due_now", "held",
        "dead_letters", "oldest_due", "oldest_due_age_seconds",
        # Added with rejected_inputs (revision 0005): extended, nothing renamed.
        "rejected_24h", "rejected_total", "last_rejected_at", "last_rejected_reason",
    }  # fmt: skip
    assert pw["queue_depth"] == 2
    assert (pw["rejected_24h"], pw["rejected_total"], pw["last_rejected_reason"]) == (0, 0, None)
    help_text = runner.invoke(app, ["departments", "status", "--help"]).output
    assert "--watch" in help_text and "--interval" in help_text


def test_ages_are_short() -> None:
    assert [age(None), age(5), age(185), age(7260), age(90000)] == [
        "-", "5s", "3m05s", "2h01m", "1d01h",
    ]  # fmt: skip
