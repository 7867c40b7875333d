"""Delivery report per department, computed from the store (used by the demo and benchmarks)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import select

from hub.services.runtime import Hub
from hub.store import tables as t


@dataclass
class DepartmentReport:
    department: str
    received: int = 0
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    pending: int = 0
    held: int = 0
    attempts: int = 0
    duplicates: int | None = None  # from the department's own records, when known
    p50_ms: float | None = None
    p95_ms: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return round(ordered[index], 1)


def delivery_report(hub: Hub) -> dict[str, DepartmentReport]:
    reports: dict[str, DepartmentReport] = {}
    with hub.engine.connect() as conn:
        for dept, state in conn.execute(
            select(t.work_orders.c.department, t.work_orders.c.delivery_state)
        ):
            report = reports.setdefault(dept, DepartmentReport(dept))
            report.received += 1
            report.delivered += state == "delivered"
            report.dead_lettered += state == "dead"
            report.held += state == "held"
            report.pending += state == "pending"
        received_at: dict[str, datetime] = dict(
            conn.execute(
                select(t.case_events.c.case_id, t.case_events.c.at).where(
                    t.case_events.c.kind == "received"
                )
            ).all()
        )
        latencies: dict[str, list[float]] = defaultdict(list)
        retried: dict[str, set[str]] = defaultdict(set)
        for case_id, dept, at, detail in conn.execute(
            select(
                t.case_events.c.case_id,
                t.case_events.c.department,
                t.case_events.c.at,
                t.case_events.c.detail,
            ).where(t.case_events.c.kind == "delivery_attempt")
        ):
            report = reports.setdefault(dept, DepartmentReport(dept))
            report.attempts += 1
            outcome = (detail or {}).get("outcome")
            if outcome == "retry":
                retried[dept].add(case_id)
            if outcome in ("delivered", "adopted") and case_id in received_at:
                latencies[dept].append((at - received_at[case_id]).total_seconds() * 1000)
    for dept, report in reports.items():
        report.retried = len(retried[dept])
        report.p50_ms = percentile(latencies[dept], 0.50)
        report.p95_ms = percentile(latencies[dept], 0.95)
    return reports
