"""A simulated city: department simulators on loopback plus a Hub configured against them.

Used by the demo, the tests and the benchmarks so all three exercise the same wiring. The
hub reaches the public-works adapter through its entry point, like any installation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hub.config import DeliveryPolicy, DepartmentConfig, HubConfig, WorkerConfig
from hub.services.runtime import Hub
from hub.store.migrate import upgrade
from hub.testing.simulators import codeenforcement as ce_sim
from hub.testing.simulators import gis as gis_sim
from hub.testing.simulators import payments as pay_sim
from hub.testing.simulators.base import BaseSimulator, FaultProfile, SimulatorServer
from hub.testing.simulators.publicworks import DEFAULT_LOGIN, DEFAULT_PASSWORD, PublicWorksSimulator
from hub.testing.simulators.sanitation import SanitationSimulator

REPO_MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
PASSWORD_ENV = "HUB_SIM_PUBLICWORKS_PASSWORD"
CE_PASSWORD_ENV = "HUB_SIM_CODEENFORCEMENT_PASSWORD"
GIS_SECRET_ENV = "HUB_SIM_GIS_CLIENT_SECRET"
PAYMENTS_KEY_ENV = "HUB_SIM_PAYMENTS_API_KEY"
PAYMENTS_WEBHOOK_ENV = "HUB_SIM_PAYMENTS_WEBHOOK_SECRET"

# Fast retry settings so a test or demo run finishes in seconds, not the production minutes.
FAST_DELIVERY = DeliveryPolicy(
    max_attempts=12,
    backoff_base_seconds=0.05,
    backoff_cap_seconds=1.0,
    unknown_outcome_delay_seconds=0.05,
    breaker_failures=25,
    breaker_cooldown_seconds=0.5,
)


@dataclass
class SimulatedCity:
    directory: Path
    database_url: str
    servers: dict[str, SimulatorServer] = field(default_factory=dict)
    timeout_seconds: float = 1.0
    delivery: DeliveryPolicy = field(default_factory=lambda: FAST_DELIVERY)
    worker: WorkerConfig = field(default_factory=WorkerConfig)

    def simulator(self, department: str) -> BaseSimulator:
        simulator = self.servers[department].simulator
        assert simulator is not None
        return simulator

    def url(self, department: str) -> str:
        return self.servers[department].url

    def config(self) -> HubConfig:
        departments = {
            "publicworks": DepartmentConfig(
                adapter="publicworks",
                settings={
                    "base_url": self.url("publicworks"),
                    "login_name": DEFAULT_LOGIN,
                    "password": {"env": PASSWORD_ENV},
                    "timeout_seconds": self.timeout_seconds,
                },
                delivery=self.delivery,
            )
        }
        if "codeenforcement" in self.servers:
            departments["codeenforcement"] = DepartmentConfig(
                adapter="codeenforcement",
                settings={
                    "base_url": self.url("codeenforcement"),
                    "username": ce_sim.DEFAULT_USERNAME,
                    "password": {"env": CE_PASSWORD_ENV},
                    "timeout_seconds": self.timeout_seconds,
                },
                delivery=self.delivery,
            )
        if "sanitation" in self.servers:
            departments["sanitation"] = DepartmentConfig(
                adapter="sanitation",
                settings={
                    "path": str(self.simulator("sanitation").root),  # type: ignore[attr-defined]
                    "mappings_dir": str(REPO_MAPPINGS),
                    "batch_max_wait_seconds": 0.1,
                    "pending_grace_seconds": 5.0,
                    "timeout_seconds": self.timeout_seconds,
                },
                delivery=self.delivery,
            )
        departments.update(self._enrichment_and_payments())
        return HubConfig(mappings=REPO_MAPPINGS, departments=departments, worker=self.worker)

    def _enrichment_and_payments(self) -> dict[str, DepartmentConfig]:
        """GIS and payments are configured like departments (they have adapters)."""
        departments = {}
        if "gis" in self.servers:
            departments["gis"] = DepartmentConfig(
                adapter="gis",
                settings={
                    "base_url": self.url("gis"),
                    "client_id": gis_sim.DEFAULT_CLIENT_ID,
                    "client_secret": {"env": GIS_SECRET_ENV},
                    "timeout_seconds": self.timeout_seconds,
                    "max_hold_seconds": 10.0,
                },
                delivery=self.delivery,
            )
        if "payments" in self.servers:
            departments["payments"] = DepartmentConfig(
                adapter="payments",
                settings={
                    "base_url": self.url("payments"),
                    "api_key": {"env": PAYMENTS_KEY_ENV},
                    "webhook_secret": {"env": PAYMENTS_WEBHOOK_ENV},
                    "timeout_seconds": self.timeout_seconds,
                    "poll_delay_seconds": 0.3,
                    "max_polls": 4,
                },
                delivery=self.delivery,
            )
        return departments

    def config_dict(self) -> dict[str, Any]:
        """The same config as YAML-ready data, for worker subprocesses (`hub worker -c`)."""
        return self.config().model_dump(mode="json", exclude={"source"})

    def hub(self) -> Hub:
        return Hub(self.config(), database=self.database_url)

    def state(self, department: str) -> dict[str, Any]:
        """The department's own view, read over HTTP like an operator would."""
        return httpx.get(f"{self.url(department)}/__sim__/state", timeout=30).json()

    def set_faults(self, department: str, faults: str | dict[str, Any]) -> None:
        self.simulator(department).set_faults(faults)


@contextmanager
def simulated_city(
    directory: Path,
    *,
    faults: str | FaultProfile = "none",
    database_url: str | None = None,
    timeout_seconds: float = 1.0,
    hang_seconds: float | None = None,
    delivery: DeliveryPolicy | None = None,
    worker: WorkerConfig | None = None,
    gis: bool = False,
    payments: bool = False,
) -> Iterator[SimulatedCity]:
    """Start the simulators, migrate the database, and yield the wiring.

    `gis` adds the GIS simulator (ward/district enrichment and routing), `payments` the
    payments simulator (fee gate; residents pay most intents within a moment). Off by
    default: with them, cases also get enrich/payment outbox rows and hold states."""
    directory.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{directory / 'hub.db'}"
    upgrade(url)
    profile = FaultProfile.coerce(faults)
    if hang_seconds is not None:
        profile = profile.model_copy(update={"hang_seconds": hang_seconds})
    os.environ.setdefault(PASSWORD_ENV, DEFAULT_PASSWORD)
    os.environ.setdefault(CE_PASSWORD_ENV, ce_sim.DEFAULT_PASSWORD)
    os.environ.setdefault(GIS_SECRET_ENV, gis_sim.DEFAULT_CLIENT_SECRET)
    os.environ.setdefault(PAYMENTS_KEY_ENV, pay_sim.DEFAULT_API_KEY)
    os.environ.setdefault(PAYMENTS_WEBHOOK_ENV, pay_sim.DEFAULT_WEBHOOK_SECRET)
    with ExitStack() as stack:
        server = stack.enter_context(SimulatorServer(PublicWorksSimulator(faults=profile)))
        soap = stack.enter_context(SimulatorServer(ce_sim.CodeEnforcementSimulator(faults=profile)))
        # The contractor (local-dir drop) takes file faults from the preset name too.
        file_faults = faults if isinstance(faults, str) else profile
        contractor = SanitationSimulator(directory / "sanitation-drop", faults=file_faults)
        if hang_seconds is not None:
            contractor.set_faults(
                contractor.profile.model_copy(update={"hang_seconds": hang_seconds})
            )
        contractor.start_background()
        stack.callback(contractor.stop)
        files = stack.enter_context(SimulatorServer(contractor))
        servers = {"publicworks": server, "codeenforcement": soap, "sanitation": files}
        if gis:  # ward/district routing
            servers["gis"] = stack.enter_context(SimulatorServer(gis_sim.GisSimulator(profile)))
        if payments:  # the fee gate; residents pay most intents within a moment
            _, behaviour = pay_sim.split_spec(faults if isinstance(faults, str) else "none")
            simulator = pay_sim.PaymentsSimulator(profile, pay_delay_seconds=0.1, **behaviour)
            servers["payments"] = stack.enter_context(SimulatorServer(simulator))
        yield SimulatedCity(
            directory=directory,
            database_url=url,
            servers=servers,
            timeout_seconds=timeout_seconds,
            delivery=delivery or FAST_DELIVERY,
            worker=worker or WorkerConfig(idle_poll_seconds=0.05),
        )
