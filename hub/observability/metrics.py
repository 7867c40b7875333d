"""Prometheus metrics: in-process counters plus gauges read from the database at scrape time.

Two kinds, on purpose:

* what happens in *this* process (deliveries attempted, status events applied, HTTP
  requests) is counted as it happens, in a per-process registry; Prometheus sums the
  processes (`sum by (department) (rate(hub_deliveries_total[5m]))`);
* what is true of the *hub* (queue depth, oldest due delivery, circuit, sync lag, drift)
  is read from the shared database by :class:`HubCollector` when scraped, so every
  process reports the same truth and a restarted worker loses nothing. A handful of
  aggregate queries on indexed columns; a dead database gives ``hub_up 0``, not a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, case, desc, func, select
from sqlalchemy.engine import Connection

from hub.model import utcnow
from hub.store import tables as t
from hub.store.repository import OPEN_STATES, outbox_departments

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger(__name__)

# One registry per process (not prometheus_client's global one, which tests and embedding
# applications share): in-process series plus the process collector.
disable_created_metrics()  # *_created samples: noise for every counter, used by nobody here
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

DELIVERIES = Counter(
    "hub_deliveries",
    "Delivery attempts by outcome (delivered, adopted, done, retry, dead, paused, skipped)"
    " and the adapter's error class.",
    ["department", "operation", "outcome", "error_class"],
    registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "hub_delivery_duration_seconds",
    "Duration of one delivery attempt (the department call), by outcome.",
    ["department", "operation", "outcome"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
STATUS_EVENTS = Counter(
    "hub_status_events",
    "Department status events processed by status sync, by source and outcome"
    " (applied, no_op, refused, unmapped, ignored, orphan, stale, duplicate).",
    ["department", "source", "outcome"],
    registry=REGISTRY,
)
INPUTS_REJECTED = Counter(
    "hub_status_inputs_rejected",
    "Department inputs (files, records) the adapter refused during a status poll, by kind"
    " (bad_file, duplicate_file, unexpected_file, unsafe_name, malformed_record, ...).",
    ["department", "kind"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "hub_http_requests",
    "HTTP requests served, by route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "hub_http_request_duration_seconds",
    "HTTP request latency by route template.",
    ["method", "route"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
TURN_SECONDS = Histogram(
    "hub_worker_turn_duration_seconds",
    "One worker database turn (settle finished attempts, claim due rows), waits for the"
    " rate-limited departments' row locks included.",
    buckets=_LATENCY,
    registry=REGISTRY,
)

CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}
SYNC_WINDOW = 50_000  # newest inbound events scanned for the sync lag (bounded cost)


# ----------------------------------------------------------------------- recording


def record_delivery(
    department: str, operation: str, outcome: str, error_class: str | None, duration_ms: float
) -> None:
    DELIVERIES.labels(department, operation, outcome, error_class or "none").inc()
    DELIVERY_SECONDS.labels(department, operation, outcome).observe(duration_ms / 1000)


def observe_turn(seconds: float) -> None:
    TURN_SECONDS.observe(seconds)


_delivery_log = logging.getLogger("hub.delivery")
_LEVELS = {"retry": logging.INFO, "skipped": logging.INFO, "dead": logging.WARNING,
           "paused": logging.WARNING}  # fmt: skip


def observe_attempt(attempt: Any) -> None:
    """Count one finished Dispatcher attempt and log it (with the correlation ids the
    dispatcher bound; the message is the department's, redacted; never the payload)."""
    item = attempt.item
    record_delivery(
        item.department, item.operation, attempt.outcome, attempt.error_class, attempt.duration_ms
    )
    _delivery_log.log(
        _LEVELS.get(attempt.outcome, logging.DEBUG),
        "%s %s: %s",
        item.operation,
        attempt.outcome,
        attempt.message,
        extra={
            "outcome": attempt.outcome,
            "error_class": attempt.error_class,
            "attempt": item.attempts,
            "duration_ms": attempt.duration_ms,
        },
    )


def record_status_events(department: str, source: str, outcomes: Mapping[str, int]) -> None:
    for outcome, count in outcomes.items():
        if count:
            STATUS_EVENTS.labels(department, source, outcome).inc(count)


def record_rejected_inputs(department: str, kinds: Mapping[str, int]) -> None:
    for kind, count in kinds.items():
        if count:
            INPUTS_REJECTED.labels(department, kind).inc(count)


def record_http(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_SECONDS.labels(method, route).observe(seconds)


# ----------------------------------------------------------------------- scrape-time gauges


@dataclass
class Snapshot:
    """What one scrape read from the database."""

    now: datetime
    departments: list[str]
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_event: dict[str, datetime] = field(default_factory=dict)
    watermarks: dict[str, datetime] = field(default_factory=dict)
    unmapped: dict[str, int] = field(default_factory=dict)
    drift: dict[str, dict[str, int]] = field(default_factory=dict)
    reconcile_finished: datetime | None = None


def read_snapshot(
    connection: Connection, now: datetime, configured: Iterable[str] = ()
) -> Snapshot:
    snap = Snapshot(now=now, departments=[])
    snap.queues = _queues(connection, now)
    snap.health = {
        row.department: dict(row._mapping) for row in connection.execute(select(t.department_state))
    }
    snap.last_event = _last_applied(connection)
    c = t.sync_cursors
    snap.watermarks = {
        d: w
        for d, w in connection.execute(
            select(c.c.department, c.c.watermark).where(c.c.stream == "status")
        )
        if w is not None
    }
    e = t.case_events  # one status_unmapped event per unmapped inbound event (indexed kind)
    snap.unmapped = dict(
        connection.execute(  # type: ignore[arg-type]
            select(e.c.department, func.count())
            .where(e.c.kind == "status_unmapped")
            .group_by(e.c.department)
        ).all()
    )
    snap.drift, snap.reconcile_finished = _last_reconcile(connection)
    snap.departments = sorted(
        {*configured, *snap.queues, *snap.health, *snap.last_event, *snap.unmapped} - {None}
    )
    return snap


def _queues(connection: Connection, now: datetime) -> dict[str, dict[str, Any]]:
    """Open rows only (pending, held, dead), sought by (department, state): the done
    history (millions of rows a year) is never read. SQLite's planner scanned it all
    when asked by state alone."""
    departments = outbox_departments(connection)
    if not departments:
        return {}
    o = t.outbox
    due = and_(o.c.state == "pending", o.c.next_attempt_at <= now)
    rows = connection.execute(
        select(
            o.c.department,
            o.c.state,
            func.count(),
            func.sum(case((due, 1), else_=0)),
            func.min(case((due, o.c.next_attempt_at), else_=None)),
        )
        .where(o.c.department.in_(departments), o.c.state.in_(OPEN_STATES))
        .group_by(o.c.department, o.c.state)
    )
    queues: dict[str, dict[str, Any]] = {}
    for department, state, count, due_count, oldest in rows:
        q = queues.setdefault(
            department, {"pending": 0, "due": 0, "held": 0, "dead": 0, "oldest_due": None}
        )
        q[state] = int(count)
        if state == "pending":
            q["due"], q["oldest_due"] = int(due_count or 0), _aware(oldest)
    return queues


def _last_applied(connection: Connection) -> dict[str, datetime]:
    """Department event time of the newest applied event, over the newest SYNC_WINDOW
    inbound rows (a primary-key range: cheap however long the history is)."""
    i = t.inbound_events
    top = connection.execute(select(func.max(i.c.id))).scalar_one_or_none()
    if top is None:
        return {}
    rows = connection.execute(
        select(i.c.department, func.max(i.c.occurred_at))
        .where(i.c.id > top - SYNC_WINDOW, i.c.outcome == "applied")
        .group_by(i.c.department)
    )
    return {d: _aware(at) for d, at in rows if at is not None}  # type: ignore[misc]


def _last_reconcile(connection: Connection) -> tuple[dict[str, dict[str, int]], datetime | None]:
    r = t.reconcile_runs
    row = connection.execute(
        select(r.c.report, r.c.counts, r.c.department, r.c.finished_at)
        .order_by(desc(r.c.id))
        .limit(1)
    ).first()
    if row is None:
        return {}, None
    departments = (row.report or {}).get("departments") or {}
    drift = {name: dict(d.get("counts") or {}) for name, d in departments.items()}
    if not drift:
        drift = {row.department or "all": dict(row.counts or {})}
    return drift, _aware(row.finished_at)


def _aware(value: Any) -> datetime | None:
    """func.min/max over a CASE loses the column type on SQLite: parse what comes back."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


class HubCollector(Collector):
    """Gauges computed from the database on each scrape."""

    def __init__(self, hub: Hub, clock: Callable[[], datetime] = utcnow) -> None:
        self.hub = hub
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # computed per scrape; no names reserved in the registry

    def collect(self) -> Iterator[Metric]:
        up = _gauge("hub_up", "1 when the hub database answered this scrape, else 0.")
        try:
            with self.hub.engine.connect() as connection:
                snap = read_snapshot(connection, self.clock(), self.hub.config.departments)
        except Exception as exc:  # the scrape reports the outage, it does not fail
            log.warning("metrics: database unreachable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from department_metrics(snap)
        yield from sync_metrics(snap)
        yield from reconcile_metrics(snap)


def department_metrics(snap: Snapshot) -> Iterator[Metric]:
    label = ["department"]
    families = {
        "pending": _gauge("hub_queue_depth", "Pending deliveries (due or scheduled).", label),
        "due": _gauge("hub_queue_due", "Pending deliveries due now.", label),
        "held": _gauge("hub_queue_held", "Deliveries held (e.g. waiting for payment).", label),
        "dead": _gauge("hub_dead_letters", "Dead-lettered deliveries awaiting a human.", label),
    }
    oldest = _gauge(
        "hub_oldest_due_age_seconds", "How long the oldest due delivery has waited.", label
    )
    circuit = _gauge("hub_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", label)
    paused = _gauge("hub_department_paused", "1 when deliveries are paused (auth).", label)
    for department in snap.departments:
        queue = snap.queues.get(department, {})
        for key, family in families.items():
            family.add_metric([department], queue.get(key, 0))
        since = queue.get("oldest_due")
        oldest.add_metric([department], max((snap.now - since).total_seconds(), 0) if since else 0)
        health = snap.health.get(department, {})
        circuit.add_metric([department], CIRCUIT_VALUES.get(health.get("circuit", "closed"), 0))
        paused.add_metric([department], 1 if health.get("paused") else 0)
    yield from (*families.values(), oldest, circuit, paused)


def sync_metrics(snap: Snapshot) -> Iterator[Metric]:
    label = ["department"]
    lag = _gauge(
        "hub_sync_lag_seconds",
        "Now minus the department time of the newest status event applied to a case.",
        label,
    )
    for department, at in sorted(snap.last_event.items()):
        lag.add_metric([department], max((snap.now - at).total_seconds(), 0))
    watermark = _gauge(
        "hub_sync_watermark_age_seconds",
        "Now minus the status-poll watermark (how far behind polling is).",
        label,
    )
    for department, at in sorted(snap.watermarks.items()):
        watermark.add_metric([department], max((snap.now - _aware(at)).total_seconds(), 0))
    unmapped = CounterMetricFamily(
        "hub_unmapped_status_codes",
        "Department status events whose code is not in the mapping (not applied).",
        labels=label,
    )
    for department in snap.departments:
        unmapped.add_metric([department], snap.unmapped.get(department, 0))
    yield from (lag, watermark, unmapped)


def reconcile_metrics(snap: Snapshot) -> Iterator[Metric]:
    drift = _gauge(
        "hub_reconcile_drift",
        "Findings of the last reconcile run by class (missing, orphan, drift, stuck).",
        ["department", "class"],
    )
    for department, counts in sorted(snap.drift.items()):
        for kind in ("missing", "orphan", "drift", "stuck"):
            drift.add_metric([department, kind], counts.get(kind, 0))
    finished = _gauge(
        "hub_reconcile_last_run_timestamp_seconds", "When the last reconcile run finished."
    )
    if snap.reconcile_finished is not None:
        finished.add_metric([], snap.reconcile_finished.timestamp())
    yield from (drift, finished)


# ----------------------------------------------------------------------- exposition


class _ProcessMetrics(Collector):
    """The per-process registry, seen through another registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def hub_registry(hub: Hub) -> CollectorRegistry:
    """What one scrape of this process shows: its own series plus the hub's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessMetrics())
    registry.register(HubCollector(hub))
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve_metrics(hub: Hub, port: int, addr: str = "127.0.0.1") -> Any:
    """Expose /metrics of a worker process on its own port (a daemon thread); returns
    the server (``.shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=hub_registry(hub))
    return server


__all__ = [
    "REGISTRY",
    "HubCollector",
    "Snapshot",
    "hub_registry",
    "observe_attempt",
    "observe_turn",
    "read_snapshot",
    "record_delivery",
    "record_http",
    "record_rejected_inputs",
    "record_status_events",
    "render",
    "serve_metrics",
]
