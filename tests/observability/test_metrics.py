"""GET /metrics: every family, with the values a small simulated run must produce."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from hub.adapters import DepartmentEvent
from hub.api.app import create_app
from hub.config import HubConfig
from hub.model import utcnow
from hub.observability.metrics import REGISTRY, HubCollector, serve_metrics
from hub.services.dispatch import Dispatcher
from hub.services.runtime import Hub
from hub.services.sync import StatusSync
from hub.store import tables as t
from hub.store.repository import DepartmentHealth
from hub.testing.harness import SimulatedCity
from tests.services.conftest import feed

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def prepare(city: SimulatedCity, hub: Hub) -> list[str]:
    """Deliver 4 cases, then shape the queue, circuit, sync and reconcile state."""
    import asyncio

    cases = feed(hub, 4, seed=21)
    asyncio.run(Dispatcher(hub, worker_id="metrics-test").run(until_empty=True, timeout=30))
    now = utcnow()
    with hub.uow() as uow:
        ids = [c.hub_id for c in cases]
        orders = [uow.work_orders.get(i, "publicworks") for i in ids]
        # 2 pending notes (one due 120 s ago, one next hour), 1 held, 1 dead.
        for n, (due, state) in enumerate(
            [(now - timedelta(seconds=120), "pending"), (now + timedelta(hours=1), "pending"),
             (now, "held"), (now, "pending")]
        ):  # fmt: skip
            uow.outbox.enqueue(case_id=ids[n], department="publicworks", operation="note",
                               idempotency_key=f"obs-{n}", due=due, state=state)  # fmt: skip
        [last] = [i for i in uow.outbox.for_case(ids[3]) if i.idempotency_key == "obs-3"]
        uow.outbox.mark_dead(last.id, error_class="permanent", message="test")
        uow.departments.put(DepartmentHealth("publicworks", circuit="open"))
        uow.departments.put(DepartmentHealth("codeenforcement", paused=True))
        uow.cursors.set("publicworks", now - timedelta(seconds=60))
        uow.connection.execute(insert(t.reconcile_runs).values(
            started_at=now, finished_at=now, healed=False, counts={"missing": 1, "drift": 2},
            report={"departments": {"publicworks": {"counts": {"missing": 1, "drift": 2}}}},
        ))  # fmt: skip
        uow.commit()
    at = now - timedelta(seconds=300)
    events = [
        DepartmentEvent(department="publicworks", external_event_id=f"e{n}",
                        external_id=orders[n].external_id, raw_code=code, occurred_at=at)
        for n, code in enumerate(["Dispatch", "Dispatch", "NoSuchCode"])
    ]  # fmt: skip
    StatusSync(hub).apply("publicworks", events, source="push")
    return ids


def test_metrics_endpoint_reports_every_family(city: SimulatedCity) -> None:
    hub = city.hub()
    before = counter("hub_deliveries_total", department="publicworks", operation="create",
                     outcome="delivered", error_class="none")  # fmt: skip
    applied = counter("hub_status_events_total", department="publicworks", source="push",
                      outcome="applied")  # fmt: skip
    prepare(city, hub)
    with TestClient(create_app(hub)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    s = parse(response.text)
    pw = {"department": "publicworks"}

    assert value(s, "hub_up") == 1
    assert value(s, "hub_deliveries_total", **pw, operation="create", outcome="delivered",
                 error_class="none") - before == 4  # fmt: skip
    assert value(s, "hub_delivery_duration_seconds_count", **pw, operation="create",
                 outcome="delivered") >= 4  # fmt: skip
    assert value(s, "hub_status_events_total", **pw, source="push", outcome="applied") == (
        applied + 2
    )
    assert value(s, "hub_status_events_total", **pw, source="push", outcome="unmapped") >= 1
    assert value(s, "hub_queue_depth", **pw) == 2  # pending: one due, one next hour
    assert value(s, "hub_queue_due", **pw) == 1
    assert value(s, "hub_queue_held", **pw) == 1
    assert value(s, "hub_dead_letters", **pw) == 1
    assert 120 <= value(s, "hub_oldest_due_age_seconds", **pw) < 200
    assert value(s, "hub_circuit_state", **pw) == 2
    assert value(s, "hub_circuit_state", department="codeenforcement") == 0
    assert value(s, "hub_department_paused", department="codeenforcement") == 1
    assert value(s, "hub_department_paused", **pw) == 0
    assert 300 <= value(s, "hub_sync_lag_seconds", **pw) < 400
    assert 60 <= value(s, "hub_sync_watermark_age_seconds", **pw) < 160
    assert value(s, "hub_unmapped_status_codes_total", **pw) == 1
    assert value(s, "hub_reconcile_drift", **pw, **{"class": "missing"}) == 1
    assert value(s, "hub_reconcile_drift", **pw, **{"class": "drift"}) == 2
    assert value(s, "hub_reconcile_drift", **pw, **{"class": "stuck"}) == 0
    assert value(s, "hub_reconcile_last_run_timestamp_seconds") > 0
    city_hub_closed(hub)


def city_hub_closed(hub: Hub) -> None:
    import asyncio

    asyncio.run(hub.aclose())
    hub.dispose()


def test_http_requests_are_counted_by_route_template_with_request_ids(
    city: SimulatedCity,
) -> None:
    hub = city.hub()
    ok = counter("hub_http_requests_total", method="GET", route="/health", status="200")
    missing = counter("hub_http_requests_total", method="GET", route="unmatched", status="404")
    with TestClient(create_app(hub)) as client:
        for _ in range(3):
            client.get("/health")
        client.get("/no/such/page")
        client.get("/open311/v2/requests/not-a-case.json")
        given = client.get("/health", headers={"X-Request-ID": "trace-42.a"})
        refused = client.get("/health", headers={"X-Request-ID": "bad id <script>"})
    assert counter("hub_http_requests_total", method="GET", route="/health", status="200") == (
        ok + 5
    )
    assert counter("hub_http_requests_total", method="GET", route="unmatched",
                   status="404") == missing + 1  # fmt: skip
    routes = {
        dict(labels)["route"]
        for (name, labels) in parse(_exposition())
        if name == "hub_http_requests_total"
    }
    assert not any("not-a-case" in r for r in routes), "raw paths must not become labels"
    assert any(r.startswith("/open311/v2/requests/{") for r in routes), routes
    assert given.headers["x-request-id"] == "trace-42.a"
    assert refused.headers["x-request-id"] != "bad id <script>"
    assert len(refused.headers["x-request-id"]) == 32
    city_hub_closed(hub)


def _exposition() -> str:
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY).decode()


def test_scrape_survives_a_dead_database(tmp_path: Path) -> None:
    hub = Hub(HubConfig(), database=f"sqlite:///{tmp_path}/missing/dir/hub.db")
    [up] = [m for m in HubCollector(hub).collect() if m.name == "hub_up"]
    assert up.samples[0].value == 0
    with TestClient(create_app(hub)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and "hub_up 0.0" in response.text
    hub.dispose()


def test_a_worker_can_serve_its_own_metrics_port(city: SimulatedCity) -> None:
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hub = city.hub()
    server = serve_metrics(hub, port)
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
    s = parse(text)
    assert value(s, "hub_up") == 1
    assert value(s, "hub_queue_depth", department="publicworks") == 0
    assert ("process_cpu_seconds_total", frozenset()) in s
    city_hub_closed(hub)
