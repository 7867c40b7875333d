"""GIS adapter (Esri ArcGIS REST) and its pipeline hooks: enrichment and location routing.

See docs/adapters/gis.md. The hook implementations live in :mod:`adapters.gis.plugin` and
are re-exported here, so the entry point ``gis = "adapters.gis"`` registers all of them.
"""

from __future__ import annotations

from adapters.gis.adapter import GisAdapter, GisConfig
from adapters.gis.plugin import (
    enrichment_report,
    hub_before_dispatch,
    hub_enrich_case,
    hub_on_status_change,
    hub_periodic_jobs,
)
from hub.hookspecs import hookimpl

__all__ = [
    "GisAdapter",
    "GisConfig",
    "hub_before_dispatch",
    "hub_enrich_case",
    "hub_on_status_change",
    "hub_periodic_jobs",
    "hub_register_adapters",
    "reconcile_section",
]


@hookimpl
def hub_register_adapters() -> list[type[GisAdapter]]:
    return [GisAdapter]


def reconcile_section(hub, *, heal: bool = False) -> dict:
    """Cases held for the GIS with no enrich job (found by hub.services.reconcile)."""
    return enrichment_report(hub, heal=heal)
