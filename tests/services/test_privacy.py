"""Requester PII and department secrets never reach logs, timeline events or the outbox."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from hub.services.dispatch import Dispatcher
from hub.store import tables as t
from hub.testing.harness import SimulatedCity
from hub.testing.simulators.publicworks import DEFAULT_PASSWORD
from tests.services.conftest import feed

pytestmark = pytest.mark.timeout(120)


async def test_no_pii_or_secret_in_logs_events_or_queue(
    city: SimulatedCity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything: hub, httpx, aiohttp, asyncio
    city.set_faults("publicworks", "flaky,seed=4,hang_seconds=1.0")
    hub = city.hub()
    cases = feed(hub, 80, seed=12)
    secrets = {DEFAULT_PASSWORD}
    pii = set()
    for case in cases:
        if case.requester:
            person = case.requester
            pii |= {v for v in (person.email, person.phone, person.last_name) if v}
    assert len(pii) > 20, "the generated cases should carry requester contact"
    dispatcher = Dispatcher(hub, worker_id="w")
    await dispatcher.run(until_empty=True, timeout=90)
    assert sum(dispatcher.stats.attempts.values()) > 80  # faults forced retries

    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    with hub.engine.connect() as conn:
        stored = [
            str(row)
            for table in (t.case_events, t.outbox, t.work_orders, t.department_state)
            for row in conn.execute(select(table))
        ]
    haystacks = {"logs": logged, "stored rows": "\n".join(stored)}
    for where, text in haystacks.items():
        leaked = sorted(value for value in pii | secrets if value in text)
        assert not leaked, f"{len(leaked)} PII/secret values found in {where}: {leaked[:3]}"
    await hub.aclose()
