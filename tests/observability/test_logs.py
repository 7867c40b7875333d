"""JSON logs during real deliveries: correlation ids on every line, no PII, no secrets."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hub.api.app import create_app
from hub.model import Case
from hub.services.dispatch import Dispatcher
from hub.services.intake import IntakeService
from hub.testing.generator import CaseGenerator
from hub.testing.harness import SimulatedCity, simulated_city
from hub.testing.simulators import codeenforcement as ce_sim
from hub.testing.simulators.publicworks import DEFAULT_PASSWORD
from tests.observability.conftest import CapturedLogs
from tests.services.conftest import feed

pytestmark = pytest.mark.timeout(120)
DEPARTMENTS = ("publicworks", "codeenforcement")


@pytest.fixture
def sqlite_city(tmp_path: Path) -> Iterator[SimulatedCity]:
    with simulated_city(
        tmp_path / "city", timeout_seconds=0.5, hang_seconds=0.6, gis=False, payments=False
    ) as c:
        yield c


async def test_delivery_log_lines_are_json_with_case_and_delivery_ids(
    sqlite_city: SimulatedCity, json_logs: CapturedLogs
) -> None:
    hub = sqlite_city.hub()
    sqlite_city.set_faults("publicworks", "error_5xx=0.3,seed=2")
    cases = feed(hub, 6, seed=5)
    await Dispatcher(hub, worker_id="log-test").run(until_empty=True, timeout=30)
    await hub.aclose()

    records = json_logs.records()  # every line parses as JSON
    attempts = [r for r in records if r["logger"] == "hub.delivery"]
    assert len(attempts) >= 6
    for r in attempts:
        assert {"ts", "level", "message", "case_id", "delivery_id", "department"} <= r.keys()
        assert r["department"] == "publicworks" and r["operation"] == "create"
        assert r["outcome"] in {"delivered", "retry", "adopted", "dead"}
    assert {r["case_id"] for r in attempts} == {c.hub_id for c in cases}
    assert any(r["outcome"] == "retry" and r["level"] == "info" for r in attempts)
    # Library lines emitted inside an attempt (the HTTP client's) carry the same ids.
    inside = [r for r in records if r["logger"].startswith("httpx") and "delivery_id" in r]
    assert inside, "the HTTP client's lines should carry the delivery's correlation ids"


def test_api_log_lines_carry_the_request_id(
    sqlite_city: SimulatedCity, json_logs: CapturedLogs
) -> None:
    hub = sqlite_city.hub()
    with TestClient(create_app(hub)) as client:
        response = client.get("/health", headers={"X-Request-ID": "req-7f3a"})
        client.get("/health")
    assert response.headers["x-request-id"] == "req-7f3a"
    served = [r for r in json_logs.records() if r["message"] == "request served"]
    assert served[0]["request_id"] == "req-7f3a"
    assert served[1]["request_id"] != "req-7f3a" and served[1]["route"] == "/health"
    assert served[0]["status"] == 200


def routed_cases(city: SimulatedCity, n: int) -> list[Case]:
    hub_mappings = city.hub().mappings
    generated = CaseGenerator(hub_mappings, seed=31).generate(n * 10)
    wanted = (
        c for c in generated
        if (r := hub_mappings.route(c)) and r.department in DEPARTMENTS and c.requester
    )  # fmt: skip
    return list(itertools.islice(wanted, n))


def pii_of(cases: list[Case]) -> list[re.Pattern[str]]:
    values: set[str] = set()
    for case in cases:
        person = case.requester
        assert person is not None
        values |= {v for v in (person.email, person.phone) if v}
        values.add(f"{person.first_name} {person.last_name}")
        if person.last_name and len(person.last_name) >= 4:  # "Le" is in too many words
            values.add(person.last_name)
    return [re.compile(rf"(?<![\w]){re.escape(v)}(?![\w])") for v in values]


async def test_flaky_delivery_at_debug_logs_no_pii_and_no_secrets(
    sqlite_city: SimulatedCity, json_logs: CapturedLogs
) -> None:
    for department in DEPARTMENTS:
        sqlite_city.set_faults(department, "flaky,seed=9,hang_seconds=0.6")
    hub = sqlite_city.hub()
    cases = routed_cases(sqlite_city, 40)
    assert len(cases) == 40
    assert all(r.created for r in IntakeService(hub).submit_many(cases))
    # A careless caller logging a whole requester: the filter still has to catch it.
    logging.getLogger("hub.test").warning("requester: %s", cases[0].requester.model_dump())
    dispatcher = Dispatcher(hub, worker_id="pii-test")
    await dispatcher.run(until_empty=True, timeout=90)
    await hub.aclose()

    output = json_logs.getvalue()
    records = json_logs.records()
    assert sum(dispatcher.stats.attempts.values()) > 40, "faults should force retries"
    assert {r["department"] for r in records if r["logger"] == "hub.delivery"} == set(DEPARTMENTS)
    assert len(records) > 100, "DEBUG should log plenty (HTTP clients, SOAP, hub)"
    patterns = pii_of(cases)
    assert len(patterns) > 60
    leaked = sorted({p.pattern for p in patterns if p.search(output)})
    assert not leaked, f"{len(leaked)} requester values in the logs: {leaked[:3]}"
    for secret in (DEFAULT_PASSWORD, ce_sim.DEFAULT_PASSWORD):
        assert secret not in output
