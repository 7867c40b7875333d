"""The hub's testing kit: department simulators, a simulated city, the adapter
conformance suite (:mod:`hub.testing.conformance`) and a realistic case generator.

``conformance_suite`` and ``AdapterHarness`` are importable from here; the conformance
module needs pytest, so it is loaded on first use only (the demo runs without pytest).
"""

from __future__ import annotations

from typing import Any

try:  # bare asserts in the shipped suite must explain themselves like a test module's
    import pytest

    pytest.register_assert_rewrite("hub.testing.conformance")
except ImportError:  # pragma: no cover - pytest is a test extra
    pass

__all__ = ["AdapterHarness", "ConformanceKit", "conformance_suite"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hub.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module 'hub.testing' has no attribute {name!r}")
