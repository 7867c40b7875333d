"""`hub top`: a live terminal view of departments, queues, circuits and lag.

Reads the same database snapshot as /metrics (so both agree), plus the delivery attempts
the timeline recorded in the last interval (an indexed range on case_events(kind, at)),
which covers every worker process, not only this one, and the department inputs rejected
in the last 24 hours (``rejected_inputs``, as `hub departments status` shows them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection, func, select

from hub.model import utcnow
from hub.observability.metrics import Snapshot, read_snapshot
from hub.store import tables as t
from hub.store.repository import RejectedInputRepository

if TYPE_CHECKING:
    from hub.services.runtime import Hub

CIRCUIT_STYLE = {"closed": "green", "half_open": "yellow", "open": "bold red"}


def age(seconds: float | None) -> str:
    """12s, 3m05s, 2h14m, 3d04h: short enough for a column."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def attempts_since(hub: Hub, since: datetime) -> dict[str, int]:
    e = t.case_events
    query = (
        select(e.c.department, func.count())
        .where(e.c.kind == "delivery_attempt", e.c.at >= since)
        .group_by(e.c.department)
    )
    with hub.engine.connect() as connection:
        return {str(d): int(n) for d, n in connection.execute(query)}


def _state(hub: Hub, department: str, snap: Snapshot) -> Text:
    if snap.health.get(department, {}).get("paused"):
        return Text("paused", style="bold red")
    if department in hub.config.enabled_departments():
        return Text("open", style="green")
    return Text("not configured", style="dim")


def rejected_last_day(connection: Connection, now: datetime) -> dict[str, int]:
    """Inputs each department's adapter refused in the 24 hours up to `now`."""
    summary = RejectedInputRepository(connection).summary(now)
    return {department: s.last_24h for department, s in summary.items()}


def _row(
    hub: Hub, department: str, snap: Snapshot, rates: dict[str, float], rejected: dict[str, int]
) -> list:
    queue = snap.queues.get(department, {})
    circuit = snap.health.get(department, {}).get("circuit", "closed")
    oldest = queue.get("oldest_due")
    lag = snap.last_event.get(department)
    dead = queue.get("dead", 0)
    refused = rejected.get(department, 0)
    return [
        department,
        _state(hub, department, snap),
        Text(circuit.replace("_", "-"), style=CIRCUIT_STYLE.get(circuit, "")),
        str(queue.get("pending", 0)),
        str(queue.get("due", 0)),
        str(queue.get("held", 0)),
        Text(str(dead), style="red" if dead else ""),
        age((snap.now - oldest).total_seconds()) if oldest else "-",
        f"{rates.get(department, 0.0):.1f}",
        age((snap.now - lag).total_seconds()) if lag else "-",
        str(snap.unmapped.get(department, 0)),
        Text(str(refused), style="yellow" if refused else ""),
    ]


def frame(hub: Hub, interval: float, clock: Callable[[], datetime] = utcnow) -> Group:
    """One screen: the department table, or why there is none."""
    now = clock()
    try:
        with hub.engine.connect() as connection:
            snap = read_snapshot(connection, now, hub.config.departments)
            rejected = rejected_last_day(connection, now)
        counts = attempts_since(hub, now - timedelta(seconds=interval))
    except Exception as exc:  # keep watching through an outage
        return Group(Text(f"{now:%H:%M:%S}  database unreachable: {type(exc).__name__}", "red"))
    rates = {d: n / interval for d, n in counts.items()}
    table = Table(
        "department", "state", "circuit", "queue", "due", "held", "dead", "oldest due",
        "attempts/s", "sync lag", "unmapped", "rejected 24h",
        title=f"hub top — {now:%Y-%m-%d %H:%M:%S} UTC, every {interval:g}s (Ctrl-C quits)",
    )  # fmt: skip
    for department in snap.departments:
        table.add_row(*_row(hub, department, snap, rates, rejected))
    parts: list = [table]
    drift = {
        k: sum(c.get(k, 0) for c in snap.drift.values())
        for k in ("missing", "orphan", "drift", "stuck")
    }
    if snap.reconcile_finished is not None:
        summary = ", ".join(f"{k} {v}" for k, v in drift.items())
        when = age((now - snap.reconcile_finished).total_seconds())
        parts.append(Text(f"last reconcile {when} ago: {summary}"))
    if not snap.departments:
        parts.append(Text("no departments configured yet"))
    return Group(*parts)


def run_top(hub: Hub, *, interval: float = 2.0, once: bool = False, console: Console) -> None:
    """Redraw every `interval` seconds until Ctrl-C; `once` prints one frame."""
    interval = max(interval, 0.2)
    if once:
        console.print(frame(hub, interval))
        return
    with Live(frame(hub, interval), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(frame(hub, interval), refresh=True)
        except KeyboardInterrupt:
            pass


__all__ = ["age", "attempts_since", "frame", "rejected_last_day", "run_top"]
