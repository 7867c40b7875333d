"""Department integration hub: 311 cases in, department work orders out, status back.

The public API for plugin and adapter authors::

    from hub import hookimpl, Adapter, AdapterConfig, Capability
    from hub import Transient, Permanent, AuthFailed, UnknownOutcome
"""

from hub.adapters import (
    Adapter,
    AdapterConfig,
    AuthFailed,
    Capability,
    DepartmentEvent,
    ExternalRef,
    MalformedResponse,
    OutboundNote,
    OutboundWorkOrder,
    Permanent,
    StatusPage,
    Transient,
    UnknownOutcome,
)
from hub.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AdapterConfig",
    "AuthFailed",
    "Capability",
    "DepartmentEvent",
    "ExternalRef",
    "MalformedResponse",
    "OutboundNote",
    "OutboundWorkOrder",
    "Permanent",
    "StatusPage",
    "Transient",
    "UnknownOutcome",
    "hookimpl",
]
