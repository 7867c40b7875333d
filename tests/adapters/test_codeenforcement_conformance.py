"""The code-enforcement (SOAP) adapter passes the hub's adapter conformance kit."""

from adapters.codeenforcement import CodeEnforcementAdapter
from adapters.codeenforcement.testing import CodeEnforcementHarness
from hub.testing import conformance_suite

TestCodeEnforcementConformance = conformance_suite(
    CodeEnforcementAdapter, harness=CodeEnforcementHarness
)
