"""Built-in router: the service catalogue and mapping rules decide, unless a plugin did."""

from __future__ import annotations

from hub.hookspecs import hookimpl
from hub.model import Case, Route


@hookimpl(trylast=True)
def hub_choose_route(case: Case, default: Route | None) -> Route | None:
    return default
