"""Code-enforcement department adapter (Accela-like case service over SOAP, via zeep)."""

from __future__ import annotations

from adapters.codeenforcement.adapter import CodeEnforcementAdapter, CodeEnforcementConfig
from hub.hookspecs import hookimpl

__all__ = ["CodeEnforcementAdapter", "CodeEnforcementConfig", "hub_register_adapters"]


@hookimpl
def hub_register_adapters() -> list[type[CodeEnforcementAdapter]]:
    return [CodeEnforcementAdapter]
