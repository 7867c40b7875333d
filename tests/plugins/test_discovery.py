"""Adapters are found through a real entry point of an installed distribution."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from hub.plugins import AdapterRegistry, PluginError, describe_adapter, make_plugin_manager


@pytest.fixture
def streetlights_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A third-party adapter package with its dist-info, as pip would install it."""
    package = tmp_path / "hub_streetlights"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent("""
        from pydantic import SecretStr
        from hub import Adapter, AdapterConfig, Capability, ExternalRef, hookimpl

        class StreetlightsConfig(AdapterConfig):
            base_url: str
            api_token: SecretStr

        class StreetlightsAdapter(Adapter):
            name = "streetlights"
            transport = "http"
            config_model = StreetlightsConfig
            capabilities = frozenset({Capability.CREATE})

            async def create(self, order):
                return ExternalRef(external_id="1")

        @hookimpl
        def hub_register_adapters():
            return [StreetlightsAdapter]
    """)
    )
    dist = tmp_path / "hub_streetlights-1.2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hub-streetlights\nVersion: 1.2.0\n"
    )
    (dist / "entry_points.txt").write_text("[hub.adapters]\nstreetlights = hub_streetlights\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("hub_streetlights", None)


def test_third_party_adapter_is_discovered(streetlights_distribution: Path) -> None:
    registry = AdapterRegistry.from_plugins(make_plugin_manager())
    info = registry.adapters["streetlights"]
    assert (info.distribution, info.version) == ("hub-streetlights", "1.2.0")
    described = describe_adapter(info)
    assert described["capabilities"] == ["create"]
    assert described["secret_fields"] == ["api_token"]
    assert described["config_schema"] == "ok"


def test_builtin_adapter_comes_through_the_same_entry_point() -> None:
    registry = AdapterRegistry.from_plugins(make_plugin_manager())
    assert registry.adapters["publicworks"].distribution == "department-hub"


def test_disabled_adapters_are_not_loaded(
    streetlights_distribution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_DISABLED_ADAPTERS", "streetlights, publicworks")
    registry = AdapterRegistry.from_plugins(make_plugin_manager())
    assert "streetlights" not in registry and "publicworks" not in registry
    with pytest.raises(PluginError, match="no adapter named 'streetlights'"):
        registry.get("streetlights")


def test_duplicate_adapter_names_are_refused() -> None:
    from hub import Adapter, hookimpl

    class A(Adapter):
        name = "twin"

    class B(Adapter):
        name = "twin"

    class PluginA:
        @hookimpl
        def hub_register_adapters(self):
            return [A]

    class PluginB:
        @hookimpl
        def hub_register_adapters(self):
            return [B]

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(PluginA(), name="a")
    pm.register(PluginB(), name="b")
    with pytest.raises(PluginError, match="'twin' registered by"):
        AdapterRegistry.from_plugins(pm)


def test_misspelt_hook_fails_at_start() -> None:
    from pluggy import PluginValidationError

    from hub import hookimpl

    class Typo:
        @hookimpl
        def hub_register_adaptors(self):
            return []

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Typo())
    with pytest.raises(PluginValidationError):
        pm.check_pending()
