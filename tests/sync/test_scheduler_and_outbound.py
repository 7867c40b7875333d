"""Scheduler across processes, 311-side changes out, and the CRM callback plugin."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter

import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hub.config import DeliveryPolicy
from hub.model import CaseStatus
from hub.services.outbound import OutboundService
from hub.services.runtime import Hub
from hub.services.scheduler import Scheduler, interval_slot
from hub.services.sync import StatusSync
from hub.services.webhooks import SIGNATURE_HEADER, verify_signature
from hub.store import tables as t
from hub.testing.simulators.base import SimulatorServer
from tests.services.conftest import feed
from tests.sync.conftest import deliver, make_hub, sim

pytestmark = pytest.mark.timeout(120)


def test_two_schedulers_in_two_threads_run_each_slot_once(city) -> None:
    hubs = [make_hub(city), make_hub(city)]
    schedulers = [Scheduler(h, worker_id=f"w{i}", poll_interval=1.0) for i, h in enumerate(hubs)]

    def run(scheduler: Scheduler) -> None:
        async def main() -> None:
            scheduler.start()
            await asyncio.sleep(4.2)
            scheduler.shutdown()
            await asyncio.sleep(1.5)  # let a poll that is running finish and record itself
            await scheduler.hub.aclose()

        asyncio.run(main())

    threads = [threading.Thread(target=run, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with hubs[0].uow() as uow:
        rows = uow.connection.execute(
            select(t.job_runs.c.job, t.job_runs.c.slot, t.job_runs.c.outcome)
        ).all()
    ran = [run for s in schedulers for run in s.ran]
    assert len(ran) >= 3 and len(ran) == len(set(ran))  # each (job, slot) ran once in all
    assert sorted(ran) == sorted((r.job, r.slot) for r in rows)
    outcomes = {r.outcome for r in rows if r.job == "poll:publicworks"}
    assert "ok" in outcomes and outcomes <= {"ok", "cancelled"}  # stopped mid-poll: recorded
    per_job = Counter(job for job, _ in ran)
    assert per_job["poll:publicworks"] >= 3 and set(per_job) <= {
        f"poll:{d}" for d in hubs[0].configured_departments()
    }


def test_slots_agree_despite_jitter() -> None:
    from datetime import UTC, datetime, timedelta

    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    early, late = at - timedelta(seconds=4), at + timedelta(seconds=4)
    assert interval_slot(early, 60) == interval_slot(late, 60)


async def test_311_notes_cancel_and_reopen_reach_the_department_or_say_why_not(city) -> None:
    hub = make_hub(city)
    [case, other] = feed(hub, 2)
    await deliver(hub)
    out = OutboundService(hub)
    assert out.add_note(case.hub_id, "Resident: it got bigger").enqueued == ["publicworks"]
    assert out.add_note(case.hub_id, "Resident: it got bigger").already == ["publicworks"]
    cancelled = out.cancel(other.hub_id, "duplicate report")
    assert cancelled.status == "cancelled" and cancelled.enqueued == ["publicworks"]
    await deliver(hub)
    records = {r["OtherSystemId"]: r for r in city.state("publicworks")["records"]}
    assert [c["Comments"] for c in records[case.hub_id]["comments"]] == ["Resident: it got bigger"]
    assert records[other.hub_id]["Status"] == "Canceled"
    reopened = out.reopen(other.hub_id, "not fixed")
    assert reopened.status == "reopened" and reopened.not_deliverable == ["publicworks"]
    with hub.uow() as uow:
        events = uow.timeline.for_case(other.hub_id)
    [note] = [e for e in events if e.kind == "not_deliverable"]
    assert note.level.value == "warning" and "reopen" in note.message
    await hub.aclose()


class Crm:
    """A 311 CRM endpoint: fails first, then accepts; checks every signature."""

    def __init__(self, secret: str, failures: int = 1) -> None:
        self.secret, self.failures, self.received = secret, failures, []
        self.app = Starlette(routes=[Route("/callbacks", self.post, methods=["POST"])])

    async def post(self, request: Request) -> JSONResponse:
        body = await request.body()
        verify_signature(self.secret, request.headers.get(SIGNATURE_HEADER), body)
        if self.failures > 0:
            self.failures -= 1
            return JSONResponse({"error": "busy"}, status_code=503)
        self.received.append((request.headers["Idempotency-Key"], json.loads(body)))
        return JSONResponse({"ok": True})


async def test_status_changes_reach_the_crm_signed_and_retried_through_the_outbox(city) -> None:
    os.environ["HUB_TEST_CRM_SECRET"] = "crm-secret"
    crm = Crm("crm-secret")
    with SimulatorServer(crm.app) as server:
        fast = DeliveryPolicy(backoff_base_seconds=0.05, backoff_cap_seconds=0.2).model_dump()
        hub: Hub = make_hub(
            city,
            url=f"{server.url}/callbacks",
            secret={"env": "HUB_TEST_CRM_SECRET"},
            delivery=fast,
        )
        StatusSync(hub)  # binds the plugin to this hub
        [case] = feed(hub, 1)
        await deliver(hub)
        sim(city).advance(1, close=True)
        await StatusSync(hub).poll("publicworks")
        await deliver(hub)
    statuses = [p["hub_status"] for _, p in crm.received]
    assert statuses == ["routed", "in_queue", "resolved"]  # in order, once each
    key, resolved = crm.received[-1]
    assert resolved["service_request_id"] == case.hub_id and resolved["status"] == "closed"
    assert resolved["closure"]["code"] == "completed" and len(resolved["media_urls"]) >= 2
    assert "requester" not in json.dumps(resolved) and key.endswith(":resolved")
    with hub.uow() as uow:
        attempts = [
            e.detail["outcome"]
            for e in uow.timeline.for_case(case.hub_id)
            if e.kind == "delivery_attempt" and e.department == "crm_callback"
        ]
    assert attempts.count("retry") == 1 and attempts.count("done") == 3
    assert (await asyncio.to_thread(lambda: CaseStatus.RESOLVED)) is CaseStatus.RESOLVED
    await hub.aclose()
