"""How the hub's conformance kit drives the code-enforcement adapter: its SOAP simulator,
settings, a sample case and an order the department refuses. Test-only (imports the
simulator)."""

from __future__ import annotations

from typing import Any

from hub.adapters import OutboundWorkOrder
from hub.model import Case
from hub.testing.conformance import AdapterHarness
from hub.testing.harness import CE_PASSWORD_ENV, REPO_MAPPINGS
from hub.testing.simulators.codeenforcement import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    CodeEnforcementSimulator,
)


class CodeEnforcementHarness(AdapterHarness):
    department = "codeenforcement"
    env = {CE_PASSWORD_ENV: DEFAULT_PASSWORD}
    mappings = REPO_MAPPINGS

    def simulator(self) -> CodeEnforcementSimulator:
        return CodeEnforcementSimulator()

    def settings(self, url: str) -> dict[str, Any]:
        return {"base_url": url, "username": DEFAULT_USERNAME, "password": {"env": CE_PASSWORD_ENV}}

    def sample_case(self, source_id: str) -> Case:
        return Case(
            source_system="conformance",
            source_id=source_id,
            service_code="OVGRLOT",
            service_name="Overgrown lot",
            description="Weeds over two feet on the vacant lot",
            address_string="48 Dorchester Ave",
            lat=42.3601,
            long=-71.0589,
        )

    def invalid_order(self, hub_id: str) -> OutboundWorkOrder:
        # The agency has no such record type: SOAP Fault INVALID_RECORD_TYPE (soap:Client).
        return OutboundWorkOrder(
            hub_id=hub_id,
            department=self.department,
            work_order_type="Enforcement/Not/Configured/NA",
            payload={
                "RecordType": "Enforcement/Not/Configured/NA",
                "Address": {"StreetAddress": "48 Dorchester Ave"},
            },
        )

    def count_records(self, state: dict[str, Any], hub_id: str) -> int:
        # The simulator lists its records with the reference they carry: count exactly.
        return sum(1 for record in state["records"] if record["ExternalReference"] == hub_id)
