"""The Hub: everything one process needs, built once from configuration."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import pluggy
from sqlalchemy import Engine

from hub.adapters import Adapter
from hub.config import ConfigError, HubConfig, build_adapter, check_settings, load_config
from hub.mapping import DepartmentMapping, MappingSet, load_mappings
from hub.plugins import AdapterRegistry, PluginError, make_plugin_manager
from hub.store.db import database_url, make_engine
from hub.store.uow import UnitOfWork

log = logging.getLogger(__name__)


class DepartmentNotConfigured(LookupError):
    pass


class Hub:
    """Wires config, store, mappings, plugins and adapters together."""

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        database: str | Engine | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
        mappings: MappingSet | None = None,
    ) -> None:
        self.config = config or load_config()
        if isinstance(database, Engine):
            self.engine = database
            self.database_url = str(database.url)
        else:
            self.database_url = database_url(database)
            self.engine = make_engine(self.database_url)
        self.pm = plugin_manager or make_plugin_manager()
        self._mappings = mappings
        self._adapters: dict[str, Adapter] = {}

    @classmethod
    def from_environment(cls, config_file: Path | str | None = None) -> Hub:
        return cls(load_config(config_file))

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.engine)

    @cached_property
    def read_engine(self) -> Engine:
        """For reads only: on SQLite a second engine whose transactions take no write lock."""
        if self.engine.dialect.name != "sqlite":
            return self.engine
        return make_engine(self.database_url, read_only=True)

    def read_uow(self) -> UnitOfWork:
        """A unit of work for queries; committing through it is a mistake."""
        return UnitOfWork(self.read_engine)

    @cached_property
    def registry(self) -> AdapterRegistry:
        return AdapterRegistry.from_plugins(self.pm)

    @property
    def mappings(self) -> MappingSet:
        if self._mappings is None:
            self._mappings = load_mappings(self.config.mappings)
        return self._mappings

    def mapping(self, department: str) -> DepartmentMapping:
        """The department's mapping; two departments on the same kind of system may share one."""
        dept = self.config.departments.get(department)
        return self.mappings.departments[(dept.mapping if dept else None) or department]

    def configured_departments(self) -> list[str]:
        return sorted(self.config.enabled_departments())

    def adapter(self, department: str) -> Adapter:
        """The department's adapter instance (one per process, created on first use)."""
        if department not in self._adapters:
            dept = self.config.enabled_departments().get(department)
            if dept is None:
                raise DepartmentNotConfigured(f"department {department!r} is not configured")
            adapter_cls = self._adapter_class(department)
            self._adapters[department] = build_adapter(
                department, dept, adapter_cls, source=self.config.source
            )
        return self._adapters[department]

    def department_problems(self) -> dict[str, list[str]]:
        """What keeps each enabled department's adapter from being built: an unknown
        adapter name or settings that do not validate (e.g. a secret's environment variable
        unset). Checked without building the adapters, which may touch their drop folders."""
        problems: dict[str, list[str]] = {}
        for department, dept in self.config.enabled_departments().items():
            try:
                check_settings(
                    department, dept, self._adapter_class(department), source=self.config.source
                )
            except ConfigError as exc:
                problems[department] = exc.problems
        return problems

    def _adapter_class(self, department: str) -> type[Adapter]:
        """The department's adapter class; an unknown name is a config problem."""
        name = self.config.departments[department].adapter
        try:
            return self.registry.get(name)
        except PluginError as exc:
            where = self.config.source or "config"
            raise ConfigError([f"{where}: departments.{department}.adapter: {exc}"]) from None

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            try:
                await adapter.aclose()
            except Exception:  # closing must not mask the real shutdown reason
                log.exception("closing adapter %s failed", adapter.name)
        self._adapters.clear()

    def dispose(self) -> None:
        if "read_engine" in self.__dict__ and self.read_engine is not self.engine:
            self.read_engine.dispose()
        self.engine.dispose()
