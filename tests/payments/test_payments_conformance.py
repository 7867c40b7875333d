"""The payments adapter passes the conformance kit (its payment capability suite)."""

from adapters.payments import PaymentsAdapter
from adapters.payments.testing import PaymentsHarness
from hub.testing import conformance_suite

TestPaymentsConformance = conformance_suite(PaymentsAdapter, harness=PaymentsHarness)
