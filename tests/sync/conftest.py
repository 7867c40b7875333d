"""Status-sync fixtures: the simulated city with webhooks enabled, on both stores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.services.dispatch import Dispatcher
from hub.services.runtime import Hub
from hub.testing.harness import SimulatedCity, simulated_city
from hub.testing.simulators.publicworks import PublicWorksSimulator

SECRET_ENV = "HUB_TEST_WEBHOOK_SECRET"
SECRET = "test-webhook-secret"


@pytest.fixture
def city(tmp_path: Path, db_url: str) -> Iterator[SimulatedCity]:
    os.environ[SECRET_ENV] = SECRET
    with simulated_city(tmp_path / "city", database_url=db_url, timeout_seconds=2.0) as c:
        yield c


def make_hub(city: SimulatedCity, **crm) -> Hub:
    config = city.config()
    config.departments["publicworks"].webhook_secret = {"env": SECRET_ENV}
    if crm:
        from hub.config import CrmCallbackConfig

        config.crm_callback = CrmCallbackConfig.model_validate(crm)
    return Hub(config, database=city.database_url)


def sim(city: SimulatedCity) -> PublicWorksSimulator:
    simulator = city.simulator("publicworks")
    assert isinstance(simulator, PublicWorksSimulator)
    return simulator


async def deliver(hub: Hub) -> None:
    await Dispatcher(hub, worker_id="test-worker").run(until_empty=True, timeout=60)
