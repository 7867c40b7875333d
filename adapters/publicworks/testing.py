"""How the hub's conformance kit drives the public-works adapter: its simulator, settings,
a sample case and an order the department refuses. Test-only (imports the simulator)."""

from __future__ import annotations

from typing import Any

from hub.adapters import OutboundWorkOrder
from hub.model import Case
from hub.testing.conformance import AdapterHarness
from hub.testing.harness import PASSWORD_ENV, REPO_MAPPINGS
from hub.testing.simulators.publicworks import (
    DEFAULT_LOGIN,
    DEFAULT_PASSWORD,
    PublicWorksSimulator,
)


class PublicWorksHarness(AdapterHarness):
    department = "publicworks"
    env = {PASSWORD_ENV: DEFAULT_PASSWORD}
    mappings = REPO_MAPPINGS

    def simulator(self) -> PublicWorksSimulator:
        return PublicWorksSimulator(token_ttl_seconds=600)

    def settings(self, url: str) -> dict[str, Any]:
        return {"base_url": url, "login_name": DEFAULT_LOGIN, "password": {"env": PASSWORD_ENV}}

    def sample_case(self, source_id: str) -> Case:
        return Case(
            source_system="conformance",
            source_id=source_id,
            service_code="POTHOLE",
            service_name="Pothole",
            description="Deep pothole in the curb lane",
            address_string="1200 Market St",
            lat=42.3601,
            long=-71.0589,
        )

    def invalid_order(self, hub_id: str) -> OutboundWorkOrder:
        # Cityworks refuses an unknown problem code with error 30 (InvalidField).
        return OutboundWorkOrder(
            hub_id=hub_id,
            department=self.department,
            work_order_type="NOT-A-CODE",
            payload={"ProblemCode": "NOT-A-CODE", "Address": "1200 Market St"},
        )

    def count_records(self, state: dict[str, Any], hub_id: str) -> int:
        # The simulator lists its records with the reference they carry: count exactly.
        return sum(1 for record in state["records"] if record["OtherSystemId"] == hub_id)
