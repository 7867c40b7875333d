"""Public works adapter against the real Cityworks-like simulator on loopback."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from adapters.publicworks import PublicWorksAdapter, PublicWorksConfig
from hub.adapters import (
    MalformedResponse,
    OutboundNote,
    OutboundWorkOrder,
    Permanent,
    Transient,
    UnknownOutcome,
)
from hub.model import Attachment
from hub.testing.simulators.base import SimulatorServer
from hub.testing.simulators.publicworks import DEFAULT_PASSWORD, PublicWorksSimulator

CLIENT_TIMEOUT = 0.3
HANG = 0.8  # > CLIENT_TIMEOUT so a timeout-after-commit is seen as a lost answer


@pytest.fixture(scope="module")
def server():
    with SimulatorServer(PublicWorksSimulator(token_ttl_seconds=600)) as running:
        yield running


@pytest.fixture
def sim(server) -> PublicWorksSimulator:
    server.simulator.reset()
    server.simulator.set_faults("none")
    server.simulator.token_ttl_seconds = 600
    server.simulator.token_expiry_grace_seconds = 1.0
    return server.simulator


@pytest.fixture
async def adapter(server, sim):
    config = PublicWorksConfig(
        base_url=server.url,
        login_name="hub",
        password=SecretStr(DEFAULT_PASSWORD),
        timeout_seconds=CLIENT_TIMEOUT,
    )
    adapter = PublicWorksAdapter(config)
    yield adapter
    await adapter.aclose()


def order(hub_id: str, code: str = "POTHOLE") -> OutboundWorkOrder:
    return OutboundWorkOrder(
        hub_id=hub_id,
        department="publicworks",
        work_order_type=code,
        payload={"Address": "1200 Market St", "Description": "deep hole"},
    )


async def admin(server, path: str, body: dict | None = None) -> dict:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await (
            client.post(path, json=body or {}) if body is not None else client.get(path)
        )
        response.raise_for_status()
        return response.json()


async def test_create_then_find_by_reference(adapter, sim):
    ref = await adapter.create(order("case-1"))
    found = await adapter.find_by_reference("case-1")
    assert found == ref
    assert (ref.raw_status, ref.hub_reference) == ("New", "case-1")
    assert await adapter.find_by_reference("case-unknown") is None


async def test_unknown_problem_code_is_permanent(adapter, sim):
    with pytest.raises(Permanent, match="30"):
        await adapter.create(order("case-1", code="NOT-A-CODE"))
    assert sim.snapshot()["records"] == []


async def test_timeout_after_commit_then_lookup_finds_the_record(adapter, server, sim):
    await adapter.find_by_reference("warm-up")  # log in before the department hangs
    await admin(server, "/__sim__/faults", {"timeout_after_commit": 1.0, "hang_seconds": HANG})
    with pytest.raises(UnknownOutcome):
        await adapter.create(order("case-lost"))
    await admin(server, "/__sim__/faults", {"preset": "none"})
    found = await adapter.find_by_reference("case-lost")
    assert found is not None and found.hub_reference == "case-lost"
    state = await admin(server, "/__sim__/state")
    assert state["create_calls"] == {"case-lost": 1} and len(state["records"]) == 1
    assert state["faults"]["timeout_after_commit"] >= 1


async def test_malformed_create_answer_is_committed_and_findable(adapter, server, sim):
    await adapter.find_by_reference("warm-up")
    await admin(server, "/__sim__/faults", {"malformed": 1.0})
    with pytest.raises(MalformedResponse):
        await adapter.create(order("case-garbled"))
    await admin(server, "/__sim__/faults", {"preset": "none"})
    assert await adapter.find_by_reference("case-garbled") is not None


async def test_advance_then_poll_changes_maps_events_in_utc(adapter, server, sim):
    since = datetime.now(UTC) - timedelta(seconds=5)
    first = await adapter.create(order("case-a"))
    second = await adapter.create(order("case-b"))
    await admin(server, "/__sim__/advance", {"count": 1})  # case-a: New → Dispatch
    changed = await admin(
        server,
        "/__sim__/advance",
        {"count": 1, "request_ids": [int(second.external_id)], "close": True},
    )
    assert changed["changed"][0]["NewValue"] == "Closed"
    page = await adapter.poll_changes(since)
    by_id = {e.external_id: e for e in page.events}
    assert by_id[first.external_id].raw_code == "Dispatch"
    closed = by_id[second.external_id]
    assert (closed.raw_code, closed.hub_reference) == ("Closed", "case-b")
    assert closed.closure_text
    assert len(closed.evidence) == 2 and closed.evidence[0].url.startswith(server.url)
    now = datetime.now(UTC)
    for event in page.events:
        assert event.occurred_at.tzinfo is UTC or event.occurred_at.utcoffset() == timedelta(0)
        assert abs((now - event.occurred_at).total_seconds()) < 60
    assert [e.sequence for e in page.events] == sorted(e.sequence for e in page.events)
    assert page.next_watermark == max(e.occurred_at for e in page.events)
    # Polling again from the watermark returns at most the boundary change, same event id.
    again = await adapter.poll_changes(page.next_watermark)
    assert {e.external_event_id for e in again.events} <= {e.external_event_id for e in page.events}
    async with httpx.AsyncClient() as client:  # the crew's photos are real URLs
        photo = await client.get(closed.evidence[0].url)
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"


async def test_note_attach_cancel(adapter, sim, tmp_path):
    ref = await adapter.create(order("case-n"))
    await adapter.add_note(ref.external_id, OutboundNote(text="Resident called again"))
    photo = tmp_path / "hole.jpg"
    photo.write_bytes(b"\xff\xd8photo\xff\xd9")
    evidence = Attachment(
        url=photo.as_uri(),
        content_type="image/jpeg",
        digest=Attachment.digest_of(photo.read_bytes()),
    )
    await adapter.attach(ref.external_id, evidence)
    await adapter.cancel(ref.external_id, "duplicate report")
    await adapter.cancel(ref.external_id, "duplicate report")  # a retry is harmless
    (record,) = sim.snapshot()["records"]
    assert record["Status"] == "Canceled" and record["CancelReason"] == "duplicate report"
    assert [c["Comments"] for c in record["comments"]] == ["Resident called again"]
    assert record["Attachments"][0]["FileName"] == "hole.jpg"
    assert sim.files[record["Attachments"][0]["AttachmentId"]][1] == photo.read_bytes()
    (event,) = await adapter.get_status([ref.external_id])
    assert event.raw_code == "Canceled" and event.evidence == []  # our upload is not echoed


async def test_attach_with_wrong_digest_is_permanent(adapter, sim, tmp_path):
    ref = await adapter.create(order("case-d"))
    photo = tmp_path / "x.jpg"
    photo.write_bytes(b"abc")
    with pytest.raises(Permanent, match="digest"):
        await adapter.attach(ref.external_id, Attachment(url=photo.as_uri(), digest="sha256:00"))


async def test_faults_endpoint_changes_behaviour_at_run_time(adapter, server, sim):
    await adapter.find_by_reference("x")
    await admin(server, "/__sim__/faults", {"preset": "outage"})
    with pytest.raises(Transient) as caught:
        await adapter.find_by_reference("x")
    assert caught.value.status_code == 503
    await admin(server, "/__sim__/faults", {"rate_limit_429": 1.0, "retry_after_seconds": 3})
    with pytest.raises(Transient) as caught:
        await adapter.find_by_reference("x")
    assert caught.value.status_code == 429 and 1 <= caught.value.retry_after <= 4
    await admin(server, "/__sim__/faults", {"error_envelope": 1.0})
    with pytest.raises(Transient):
        await adapter.create(order("case-e"))
    assert sim.snapshot()["records"] == []  # an error envelope commits nothing
    await admin(server, "/__sim__/faults", {"preset": "none"})
    assert await adapter.find_by_reference("x") is None


async def test_token_expiry_is_survived_transparently(adapter, sim):
    await adapter.create(order("case-t1"))
    sim.tokens.clear()  # server restart: every token forgotten → Status 2 → log in again
    await adapter.create(order("case-t2"))
    sim.token_expiry_grace_seconds = 0.1
    sim.set_faults({"token_expiry": 1.0})  # every token older than the grace lapses
    for n in range(3):
        await asyncio.sleep(0.15)
        await adapter.find_by_reference(f"case-t{n}")  # refused → one refresh → answered
    assert sim.faults.counters["token_expiry"] == 3


async def test_short_token_ttl_is_renewed_before_it_lapses(server, sim):
    sim.token_ttl_seconds = 2
    config = PublicWorksConfig(
        base_url=server.url,
        login_name="hub",
        password=SecretStr(DEFAULT_PASSWORD),
        token_refresh_margin_seconds=1,
        timeout_seconds=1,
    )
    adapter = PublicWorksAdapter(config)
    try:
        await adapter.find_by_reference("a")
        first = adapter.client._token
        time.sleep(1.1)
        await adapter.find_by_reference("a")
        assert adapter.client._token != first  # renewed proactively, no refusal needed
    finally:
        await adapter.aclose()


async def test_flaky_department_still_gets_exactly_one_request_per_case(adapter, server, sim):
    """The engine's contract in miniature: after an unknown outcome look up, then create."""
    sim.set_faults({"preset": "flaky", "hang_seconds": HANG, "seed": 11})

    async def deliver(hub_id: str) -> str:
        for _ in range(40):
            try:
                found = await adapter.find_by_reference(hub_id)
                if found is not None:
                    return found.external_id
                return (await adapter.create(order(hub_id))).external_id
            except (UnknownOutcome, Transient):
                await asyncio.sleep(0.01)
        raise AssertionError("never delivered")

    ids = await asyncio.gather(*(deliver(f"flaky-{n}") for n in range(25)))
    sim.set_faults("none")
    state = sim.snapshot()
    assert state["duplicates"] == {} and len(state["records"]) == 25 == len(set(ids))
    assert sum(sim.faults.counters.values()) > 0
