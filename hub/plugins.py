"""Plugin manager: built-ins and installed plugins, registered the same way.

Installed adapters are found through the entry-point group ``hub.adapters``.
``HUB_DISABLED_ADAPTERS=a,b`` blocks entry points (and adapters) by name.
``HUB_TRACE_PLUGINS=1`` prints every hook call to stderr (debugging a bad plugin).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from hub import hookspecs
from hub.adapters import Adapter

ENTRY_POINT_GROUP = "hub.adapters"
DISABLED_ENV = "HUB_DISABLED_ADAPTERS"
TRACE_ENV = "HUB_TRACE_PLUGINS"

# The hub's own plugins. They use the public hookimpl marker like anyone else's.
BUILTIN_PLUGINS: tuple[str, ...] = ("hub.builtins.routing", "hub.builtins.crm_callback")


class PluginError(RuntimeError):
    pass


def disabled_names() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLED_ENV, "").split(",") if name.strip()}


def make_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        module = __import__(module_name, fromlist=["_"])
        pm.register(module, name=module_name)
    if load_entry_points:
        for name in disabled_names():
            pm.set_blocked(name)
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()  # a misspelt hook name fails loudly at start-up
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


@dataclass
class AdapterInfo:
    name: str
    cls: type[Adapter]
    plugin: str
    distribution: str | None = None
    version: str | None = None


@dataclass
class AdapterRegistry:
    """Every adapter class contributed through ``hub_register_adapters``, by name."""

    adapters: dict[str, AdapterInfo] = field(default_factory=dict)

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager) -> AdapterRegistry:
        registry = cls()
        blocked = disabled_names()
        dists = {plugin_name: dist for plugin_name, dist in _plugin_distributions(pm)}
        for impl in pm.hook.hub_register_adapters.get_hookimpls():
            for adapter_cls in impl.function() or []:
                registry._add(adapter_cls, impl.plugin_name, dists.get(impl.plugin_name), blocked)
        return registry

    def _add(self, adapter_cls, plugin_name: str, dist, blocked: set[str]) -> None:
        if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, Adapter)):
            raise PluginError(f"plugin {plugin_name} registered {adapter_cls!r}, not an Adapter")
        name = getattr(adapter_cls, "name", None)
        if not name:
            raise PluginError(f"adapter {adapter_cls.__qualname__} has no name")
        if name in blocked:
            return
        if name in self.adapters and self.adapters[name].cls is not adapter_cls:
            other = self.adapters[name].plugin
            raise PluginError(f"adapter name {name!r} registered by {other} and {plugin_name}")
        self.adapters[name] = AdapterInfo(
            name=name,
            cls=adapter_cls,
            plugin=plugin_name,
            distribution=dist.metadata["Name"] if dist else None,
            version=dist.version if dist else None,
        )

    def get(self, name: str) -> type[Adapter]:
        try:
            return self.adapters[name].cls
        except KeyError:
            known = ", ".join(sorted(self.adapters)) or "none"
            message = f"no adapter named {name!r} is installed (installed: {known})"
            raise PluginError(message) from None

    def __contains__(self, name: str) -> bool:
        return name in self.adapters

    def __iter__(self):
        return iter(sorted(self.adapters.values(), key=lambda info: info.name))


def _plugin_distributions(pm: pluggy.PluginManager):
    for plugin, dist in pm.list_plugin_distinfo():
        yield pm.get_name(plugin), dist


def describe_adapter(info: AdapterInfo) -> dict:
    """What `hub adapters list` shows for one adapter."""
    cls = info.cls
    config_model = cls.config_model
    try:
        schema = config_model.model_json_schema()
        schema_status = "ok"
    except Exception as exc:  # a broken config model is reported, not fatal to listing
        schema, schema_status = {}, f"invalid: {exc}"
    return {
        "name": info.name,
        "transport": cls.transport,
        "capabilities": sorted(c.value for c in cls.capabilities),
        "config_model": f"{config_model.__module__}.{config_model.__qualname__}",
        "config_schema": schema_status,
        "config_fields": sorted(schema.get("properties", {})),
        "secret_fields": config_model.secret_fields(),
        "plugin": info.plugin,
        "distribution": info.distribution,
        "version": info.version,
        "description": cls.description,
    }


def entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
