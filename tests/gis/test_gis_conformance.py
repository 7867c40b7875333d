"""The GIS adapter passes the conformance kit (its enrichment capability suite)."""

from adapters.gis import GisAdapter
from adapters.gis.testing import GisHarness
from hub.testing import conformance_suite

TestGisConformance = conformance_suite(GisAdapter, harness=GisHarness)
