"""The public-works adapter passes the hub's adapter conformance kit."""

from adapters.publicworks import PublicWorksAdapter
from adapters.publicworks.testing import PublicWorksHarness
from hub.testing import conformance_suite

TestPublicWorksConformance = conformance_suite(PublicWorksAdapter, harness=PublicWorksHarness)
