"""How the conformance kit drives the payments adapter (test-only: imports the simulator)."""

from __future__ import annotations

import time
from typing import Any

from adapters.payments.adapter import sign
from hub.model import Case
from hub.testing.conformance import AdapterHarness
from hub.testing.harness import REPO_MAPPINGS
from hub.testing.simulators.payments import (
    DEFAULT_API_KEY,
    DEFAULT_WEBHOOK_SECRET,
    PaymentsSimulator,
)

KEY_ENV = "HUB_SIM_PAYMENTS_API_KEY"
WEBHOOK_ENV = "HUB_SIM_PAYMENTS_WEBHOOK_SECRET"


class PaymentsHarness(AdapterHarness):
    department = "payments"
    env = {KEY_ENV: DEFAULT_API_KEY, WEBHOOK_ENV: DEFAULT_WEBHOOK_SECRET}
    mappings = REPO_MAPPINGS

    def simulator(self) -> PaymentsSimulator:
        return PaymentsSimulator(auto_succeed=False)

    def settings(self, url: str) -> dict[str, Any]:
        return {
            "base_url": url,
            "api_key": {"env": KEY_ENV},
            "webhook_secret": {"env": WEBHOOK_ENV},
        }

    def sample_case(self, source_id: str) -> Case:
        return Case(
            service_code="BULKITEM", attributes={"item_types": ["furniture"], "item_count": 2}
        )

    def sign_webhook(
        self, body: bytes, *, secret: str = DEFAULT_WEBHOOK_SECRET, age_seconds: int = 0
    ) -> str:
        return sign(secret, body, int(time.time()) - age_seconds)
