"""`hub sync` and `hub reconcile` against the simulated city (the CLI contract)."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from typer.testing import CliRunner

from hub.cli import app
from tests.services.conftest import feed
from tests.sync.conftest import deliver, make_hub, sim

pytestmark = pytest.mark.timeout(120)


def test_sync_and_reconcile_commands(city, tmp_path) -> None:
    hub = make_hub(city)
    feed(hub, 3)
    asyncio.run(deliver(hub))
    asyncio.run(hub.aclose())
    sim(city).advance(1, close=True)
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump(city.config_dict()))
    runner = CliRunner()
    env = {"HUB_DATABASE_URL": city.database_url}

    done = runner.invoke(app, ["sync", "-c", str(config), "-d", "publicworks", "--json"], env=env)
    assert done.exit_code == 0, done.output
    [row] = json.loads(done.output)
    assert row["department"] == "publicworks" and row["applied"] == 1

    done = runner.invoke(
        app, ["reconcile", "-c", str(config), "-d", "publicworks", "--json"], env=env
    )
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["clean"] and report["departments"]["publicworks"]["compared"] == 3

    sim(city).lose(int(city.state("publicworks")["records"][0]["RequestId"]))
    done = runner.invoke(app, ["reconcile", "-c", str(config), "-d", "publicworks"], env=env)
    assert done.exit_code == 0 and "drift found" in done.output and "missing" in done.output
    done = runner.invoke(app, ["reconcile", "-c", str(config), "--last", "--json"], env=env)
    assert json.loads(done.output)["counts"]["missing"] == 1
