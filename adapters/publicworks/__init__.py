"""Public works department adapter (Trimble Cityworks Services API)."""

from __future__ import annotations

from adapters.publicworks.adapter import PublicWorksAdapter, PublicWorksConfig
from hub.hookspecs import hookimpl

__all__ = ["PublicWorksAdapter", "PublicWorksConfig", "hub_register_adapters"]


@hookimpl
def hub_register_adapters() -> list[type[PublicWorksAdapter]]:
    return [PublicWorksAdapter]
