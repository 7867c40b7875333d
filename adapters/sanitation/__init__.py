"""Sanitation department adapter (contractor CSV batch files over a directory or SFTP)."""

from __future__ import annotations

from adapters.sanitation.adapter import SanitationAdapter, SanitationConfig
from hub.hookspecs import hookimpl

__all__ = ["SanitationAdapter", "SanitationConfig", "hub_register_adapters"]


@hookimpl
def hub_register_adapters() -> list[type[SanitationAdapter]]:
    return [SanitationAdapter]
