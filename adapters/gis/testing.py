"""How the conformance kit drives the GIS adapter (test-only: imports the simulator)."""

from __future__ import annotations

from typing import Any

from hub.model import Case
from hub.testing.conformance import AdapterHarness
from hub.testing.harness import REPO_MAPPINGS
from hub.testing.simulators.gis import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    WARD_3_AT,
    GisSimulator,
)

GIS_SECRET_ENV = "HUB_SIM_GIS_CLIENT_SECRET"


class GisHarness(AdapterHarness):
    department = "gis"
    env = {GIS_SECRET_ENV: DEFAULT_CLIENT_SECRET}
    mappings = REPO_MAPPINGS

    def simulator(self) -> GisSimulator:
        return GisSimulator()

    def settings(self, url: str) -> dict[str, Any]:
        return {
            "base_url": url,
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": {"env": GIS_SECRET_ENV},
        }

    def sample_case(self, source_id: str) -> Case:
        return Case(service_code="POTHOLE", lat=WARD_3_AT[0], long=WARD_3_AT[1])

    def sample_location(self) -> tuple[float, float, dict[str, str]]:
        """A point inside the city and facts the GIS must report for it."""
        return WARD_3_AT[0], WARD_3_AT[1], {"ward": "3"}

    def outside_location(self) -> tuple[float, float]:
        return 40.0, -100.0  # Kansas: no polygon, no address
