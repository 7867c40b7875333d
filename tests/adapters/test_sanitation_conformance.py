"""The sanitation adapter against the hub's conformance kit (contractor over real SFTP)."""

from adapters.sanitation import SanitationAdapter
from adapters.sanitation.testing import SanitationHarness
from hub.testing.conformance import conformance_suite

TestSanitationConformance = conformance_suite(SanitationAdapter, harness=SanitationHarness)
