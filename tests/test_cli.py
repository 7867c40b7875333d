"""The `hub` command as a user scripts it: exit codes, JSON output, messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from hub.cli import app
from hub.store.migrate import head_revision
from hub.testing.harness import SimulatedCity, simulated_city
from tests.services.conftest import feed

runner = CliRunner()


def all_commands(group, prefix: tuple[str, ...] = ()):
    """Walk the command tree (duck-typed: Typer vendors its own click)."""
    ctx = group.make_context("hub", ["--help"], resilient_parsing=True)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield (*prefix, name)
        if hasattr(command, "list_commands"):
            yield from all_commands(command, (*prefix, name))


COMMANDS = list(all_commands(get_command(app)))


def test_the_command_set_is_complete() -> None:
    names = {" ".join(c) for c in COMMANDS}
    assert {
        "db upgrade",
        "adapters list",
        "mappings validate",
        "config validate",
        "worker",
        "dlq list",
        "dlq replay",
        "case show",
        "departments status",
        "departments resume",
        "simulate publicworks",
        "demo",
    } <= names


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_subcommand_has_help(command: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output) > 80


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [Path(sys.executable).with_name("hub"), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "worker" in result.stdout


def test_db_upgrade_creates_the_schema(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_DATABASE_URL", db_url)
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"is at revision {head_revision()}" in result.output


def test_db_upgrade_defaults_to_sqlite_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUB_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert (tmp_path / "hub.db").exists()


def test_adapters_list_json() -> None:
    result = runner.invoke(app, ["adapters", "list", "--json"])
    assert result.exit_code == 0
    [publicworks] = [a for a in json.loads(result.output) if a["name"] == "publicworks"]
    assert publicworks["transport"] == "http"
    assert {"create", "find_by_reference", "status_poll"} <= set(publicworks["capabilities"])
    assert publicworks["secret_fields"] == ["password"]
    assert publicworks["config_schema"] == "ok"


def test_mappings_validate_ok_and_bad(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["mappings", "validate"])
    assert ok.exit_code == 0 and "mappings ok" in ok.output
    bad = tmp_path / "publicworks.yaml"
    text = Path("mappings/publicworks.yaml").read_text()
    bad.write_text(text.replace("New: in_queue", "New: in_progress"))
    result = runner.invoke(app, ["mappings", "validate", str(bad)])
    assert result.exit_code == 1
    line = text[: text.index("New: in_queue")].count("\n") + 1
    assert f"{bad}:{line}: status_in.New:" in result.output


def test_config_validate_refuses_a_literal_secret_without_echoing_it(tmp_path: Path) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mappings": str(Path("mappings").resolve()),
                "departments": {
                    "publicworks": {
                        "adapter": "publicworks",
                        "settings": {
                            "base_url": "http://127.0.0.1:9",
                            "login_name": "hub",
                            "password": "hunter2-literal",
                        },
                    }
                },
            }
        )
    )
    result = runner.invoke(app, ["config", "validate", "-c", str(config)])
    assert result.exit_code == 1
    assert "departments.publicworks.settings" in result.output and "password" in result.output
    assert "hunter2-literal" not in result.output


def test_config_validate_names_unknown_adapter_and_bad_field(tmp_path: Path) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "departments": {
                    "parks": {"adapter": "no-such-adapter"},
                    "publicworks": {"adapter": "publicworks", "settings": {"login_name": "x"}},
                }
            }
        )
    )
    result = runner.invoke(app, ["config", "validate", "-c", str(config)])
    assert result.exit_code == 1
    assert "departments.parks.adapter: no adapter named 'no-such-adapter'" in result.output
    assert "departments.publicworks.settings.base_url: Field required" in result.output


def test_config_validate_without_departments(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HUB_CONFIG", raising=False)
    result = runner.invoke(app, ["config", "validate"])
    assert result.exit_code == 0 and "no departments configured yet" in result.output


@pytest.fixture
def city_with_config(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch):
    with simulated_city(tmp_path / "city", database_url=db_url) as city:
        config = tmp_path / "hub.yaml"
        config.write_text(yaml.safe_dump(city.config_dict()))
        monkeypatch.setenv("HUB_DATABASE_URL", db_url)
        monkeypatch.setenv("HUB_CONFIG", str(config))
        yield city


def test_worker_dlq_case_and_departments_commands(city_with_config: SimulatedCity) -> None:
    city = city_with_config
    simulator = city.simulator("publicworks")
    codes, simulator.problem_codes = simulator.problem_codes, set()  # every create refused
    hub = city.hub()
    cases = feed(hub, 3)
    drained = runner.invoke(app, ["worker", "--drain"])
    assert drained.exit_code == 0
    stats = json.loads(drained.stdout.strip().splitlines()[-1])  # the worker's own figures
    assert stats["dead"] == 3 and stats["turns"] >= 1 and 0 < stats["slots_busy"] <= 1
    assert 0 <= stats["turn_cpu_seconds"] <= stats["turn_seconds"] + 0.001
    assert stats["turn_seconds"] <= stats["run_seconds"]

    dead = json.loads(runner.invoke(app, ["dlq", "list", "--json"]).output)
    assert len(dead) == 3 and all(d["error_class"] == "permanent" for d in dead)
    assert "InvalidField" in dead[0]["reason"]

    status = json.loads(runner.invoke(app, ["departments", "status", "--json"]).output)
    [publicworks] = [d for d in status if d["department"] == "publicworks"]
    assert publicworks["dead_letters"] == 3 and publicworks["state"] == "open"

    missing = runner.invoke(app, ["dlq", "replay", "999999"])
    assert missing.exit_code == 1
    simulator.problem_codes = codes
    replay = runner.invoke(app, ["dlq", "replay", "--all"])
    assert replay.exit_code == 0 and "replayed 3" in replay.output
    assert runner.invoke(app, ["worker", "--drain"]).exit_code == 0

    shown = json.loads(runner.invoke(app, ["case", "show", cases[0].hub_id, "--json"]).output)
    kinds = [e["kind"] for e in shown["timeline"]]
    assert kinds.count("delivery_attempt") == 2 and "replayed" in kinds
    assert shown["work_orders"][0]["delivery_state"] == "delivered"
    assert "requester" not in shown["case"]
    table = runner.invoke(app, ["case", "show", cases[0].hub_id])
    assert table.exit_code == 0 and "dead_lettered" in table.output
    assert runner.invoke(app, ["case", "show", "nope"]).exit_code == 1


def test_worker_warns_at_start_of_a_department_it_cannot_build(
    city_with_config: SimulatedCity, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed(city_with_config.hub(), 1)
    monkeypatch.delenv("HUB_SIM_PUBLICWORKS_PASSWORD")
    result = runner.invoke(app, ["worker", "--drain"])
    assert result.exit_code == 0, result.output
    assert "departments.publicworks.settings: password: environment variable" in result.stderr
    assert "publicworks pauses at its first delivery" in result.stderr
    status = json.loads(runner.invoke(app, ["departments", "status", "--json"]).output)
    [publicworks] = [d for d in status if d["department"] == "publicworks"]
    assert publicworks["state"] == "paused" and publicworks["queue_depth"] == 1


def test_worker_no_dispatch_runs_the_polls_and_delivers_nothing(
    tmp_path: Path, db_url: str
) -> None:
    """`hub worker --no-dispatch` is the scheduler alone: beside a SQLite hub's one
    delivering worker (--no-scheduler) it moves the status polls to another core."""
    import os
    import signal
    import time

    from sqlalchemy import create_engine, select

    from hub.store import tables as t

    with simulated_city(tmp_path / "city", database_url=db_url) as city:
        config = city.config_dict()
        config["departments"]["publicworks"]["poll_interval_seconds"] = 0.5
        path = tmp_path / "hub.yaml"
        path.write_text(yaml.safe_dump(config))
        feed(city.hub(), 3)
        env = {**os.environ, "HUB_DATABASE_URL": db_url}
        command = [sys.executable, "-m", "hub.cli", "worker", "-c", str(path), "--no-dispatch"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        engine = create_engine(db_url)
        try:
            deadline = time.monotonic() + 30
            polls: list = []
            while not polls and time.monotonic() < deadline:
                time.sleep(0.25)
                with engine.connect() as conn:
                    polls = conn.execute(
                        select(t.job_runs.c.job).where(t.job_runs.c.job == "poll:publicworks")
                    ).all()
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        with engine.connect() as conn:
            states = conn.execute(select(t.outbox.c.state, t.outbox.c.attempts)).all()
        engine.dispose()
    assert polls, "the scheduler never ran a status poll"
    assert process.returncode == 0
    assert json.loads(output.strip().splitlines()[-1])["claimed"] == 0
    assert states and all(s == ("pending", 0) for s in states)  # nothing was claimed


def test_worker_no_dispatch_refuses_no_scheduler_and_drain() -> None:
    for extra in ("--no-scheduler", "--drain"):
        result = runner.invoke(app, ["worker", "--no-dispatch", extra])
        assert result.exit_code == 2 and "--no-dispatch" in result.output
