"""Status in: crews close work orders and the cases show it (polling and webhooks)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI

from hub.api.webhooks import router
from hub.model import CaseStatus, StatusEvent
from hub.services.sync import StatusSync, inbound_counts, poll_since
from hub.services.webhooks import SIGNATURE_HEADER, signature_header
from hub.testing.harness import SimulatedCity
from tests.services.conftest import feed
from tests.statements import statements
from tests.sync.conftest import SECRET, deliver, make_hub, sim

pytestmark = pytest.mark.timeout(120)
NY = ZoneInfo("America/New_York")


async def delivered_cases(city: SimulatedCity, n: int):
    hub = make_hub(city)
    cases = feed(hub, n)
    await deliver(hub)
    with hub.uow() as uow:
        orders = {c.hub_id: uow.work_orders.get(c.hub_id, "publicworks") for c in cases}
    return hub, cases, orders


def app_for(hub) -> httpx.AsyncClient:
    app = FastAPI()
    app.state.hub = hub
    app.include_router(router)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub")


async def test_crews_close_work_orders_and_polling_resolves_the_cases(city) -> None:
    hub, _cases, orders = await delivered_cases(city, 4)
    closed = sim(city).advance(2, close=True)
    sim(city).advance(1)  # one more goes New → Dispatch
    result = await StatusSync(hub).poll("publicworks")
    assert result.outcomes["applied"] == 3
    by_ext = {o.external_id: cid for cid, o in orders.items()}
    with hub.uow() as uow:
        for change in closed:
            case = uow.cases.get(by_ext[str(change["RequestId"])])
            assert case.status is CaseStatus.RESOLVED
            assert case.closure.code == "completed" and case.closure.text == change["Resolution"]
            photos = [a.url for a in case.evidence][-2:]  # after the resident's own
            assert all(u.endswith(p) for u, p in zip(photos, change["Photos"], strict=True))
            order = uow.work_orders.get(case.hub_id, "publicworks")
            assert (order.raw_status, order.mapped_status) == ("Closed", CaseStatus.RESOLVED)
            [update] = [u for u in uow.status_updates.for_case(case.hub_id) if u.source == "poll"]
            assert update.closure_code == "completed" and update.raw_code == "Closed"
    again = await StatusSync(hub).poll("publicworks")  # overlap re-reads: all duplicates
    assert again.outcomes["applied"] == 0 and again.outcomes["duplicate"] >= 3
    await hub.aclose()


async def test_events_already_recorded_are_counted_before_the_write_transaction(city) -> None:
    hub, _cases, _orders = await delivered_cases(city, 3)
    sim(city).advance(3, close=True)
    first = await StatusSync(hub).poll("publicworks")
    assert first.outcomes["applied"] == 3
    with statements(hub.engine) as sent:
        again = await StatusSync(hub).poll("publicworks")  # the overlap: the same events
    assert again.outcomes["duplicate"] == again.received >= 3 and again.outcomes["applied"] == 0
    written = [s for s in sent if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    assert not [s for s in written if "inbound_events" in s]  # neither written nor probed
    await hub.aclose()


async def test_a_sync_does_not_look_up_again_what_it_committed(city) -> None:
    # A contractor's files repeat the last 90 minutes and every poll re-reads its overlap:
    # the ids a sync committed are remembered, so their repeats cost no query at all.
    hub, _cases, _orders = await delivered_cases(city, 3)
    sim(city).advance(3, close=True)
    sync = StatusSync(hub)
    assert (await sync.poll("publicworks")).outcomes["applied"] == 3
    with statements(hub.engine) as sent, statements(hub.read_engine) as read:
        again = await sync.poll("publicworks")
    assert again.outcomes["duplicate"] == again.received >= 3 and again.outcomes["applied"] == 0
    assert not [s for s in sent + read if "inbound_events" in s]
    await hub.aclose()


async def test_ids_are_remembered_only_once_their_page_committed(city, monkeypatch) -> None:
    from hub.store.uow import UnitOfWork

    hub, _cases, orders = await delivered_cases(city, 2)
    sim(city).advance(2, close=True)
    events = await hub.adapter("publicworks").get_status([o.external_id for o in orders.values()])
    sync = StatusSync(hub)
    real_commit = UnitOfWork.commit

    def commit_fails(self) -> None:
        raise RuntimeError("the database went away at commit")

    monkeypatch.setattr(UnitOfWork, "commit", commit_fails)
    with pytest.raises(RuntimeError):
        sync.apply("publicworks", events, source="poll")
    assert len(sync.committed) == 0  # nothing is known: the page is applied again
    monkeypatch.setattr(UnitOfWork, "commit", real_commit)
    result = sync.apply("publicworks", events, source="poll")
    assert result.outcomes["applied"] == 2 and len(sync.committed) == 2
    await hub.aclose()


def test_the_committed_ids_kept_are_bounded_and_a_repeat_stays() -> None:
    from hub.services.sync import CommittedIds

    kept = CommittedIds(kept=3)
    kept.add("sanitation", ["a", "b", "c"])
    assert kept.has("sanitation", "a")  # seen again: now the most recent
    kept.add("sanitation", ["d"])
    assert [kept.has("sanitation", i) for i in "abcd"] == [True, False, True, True]
    assert not kept.has("publicworks", "a") and len(kept) == 3


async def test_webhook_closes_a_case_and_forged_stale_replayed_change_nothing(city) -> None:
    hub, _cases, orders = await delivered_cases(city, 2)
    case_id, order = next(iter(orders.items()))
    body = json.dumps(
        {
            "events": [
                {
                    "event_id": f"{order.external_id}:Closed:1",
                    "work_order_id": order.external_id,
                    "status": "Closed",
                    "status_text": "Closed",
                    "occurred_at": "2026-05-04T10:15:00",
                    "closure_text": "Filled and rolled",
                    "evidence": [
                        {"url": "https://dept.example/p/1.jpg", "content_type": "image/jpeg"}
                    ],
                }
            ]
        }
    ).encode()
    async with app_for(hub) as client:

        async def post(header: str | None, data: bytes = body) -> httpx.Response:
            headers = {SIGNATURE_HEADER: header} if header else {}
            return await client.post("/webhooks/publicworks", content=data, headers=headers)

        forged = signature_header("not-the-secret", body)
        stale = signature_header(SECRET, body, timestamp=int(time.time()) - 301)
        tampered = signature_header(SECRET, body)
        for header, data in (
            (None, body),
            (forged, body),
            (stale, body),
            ("t=abc,v1=00", body),
            (tampered, body.replace(b"Closed", b"New")),
        ):
            assert (await post(header, data)).status_code == 401
        with hub.uow() as uow:
            assert uow.cases.get(case_id).status is CaseStatus.IN_QUEUE
        signed = signature_header(SECRET, body)
        first = await post(signed)
        assert first.status_code == 200 and first.json()["applied"] == 1
        replay = await post(signed)
        assert replay.status_code == 200 and replay.json()["duplicate"] == 1
        assert (
            await client.post("/webhooks/nowhere", content=body, headers={SIGNATURE_HEADER: signed})
        ).status_code == 404
    with hub.uow() as uow:
        case = uow.cases.get(case_id)
        updates = uow.status_updates.for_case(case_id)
    assert case.status is CaseStatus.RESOLVED and case.closure.text == "Filled and rolled"
    assert case.evidence[-1].url == "https://dept.example/p/1.jpg"
    # naive occurred_at is New York wall time: 10:15 EDT is 14:15 UTC
    assert case.updated_datetime == datetime(2026, 5, 4, 14, 15, tzinfo=UTC)
    assert [u.source for u in updates].count("push") == 1
    await hub.aclose()


def event(order, code: str, seq: str, eid: str | None = None) -> StatusEvent:
    return StatusEvent(
        department="publicworks",
        external_event_id=eid or f"{code}-{seq}",
        external_id=order.external_id,
        raw_code=code,
        raw_text=code,
        occurred_at=datetime.now(UTC),
        sequence=seq,
    )


async def test_duplicates_out_of_order_unmapped_and_orphans_are_no_ops(city) -> None:
    hub, _cases, orders = await delivered_cases(city, 1)
    [(case_id, order)] = orders.items()
    sync = StatusSync(hub)
    batch = [event(order, "Dispatch", "0002"), event(order, "New", "0001")]
    result = sync.apply("publicworks", batch, source="push")  # sorted: New, then Dispatch
    assert result.outcomes["applied"] == 1 and result.outcomes["no_op"] == 1
    late = sync.apply("publicworks", [event(order, "Pending", "00015", "late")], source="push")
    assert late.outcomes["stale"] == 1  # older than the Dispatch already applied
    dup = sync.apply("publicworks", batch, source="poll")
    assert dup.outcomes["duplicate"] == 2
    closed = sync.apply("publicworks", [event(order, "Closed", "0003")], source="poll")
    assert closed.outcomes["applied"] == 1
    back = sync.apply("publicworks", [event(order, "Dispatch", "0004")], source="poll")
    assert back.outcomes["refused"] == 1  # closed never reopens unless mapped to reopened
    bogus = sync.apply("publicworks", [event(order, "Bogus", "0005")], source="poll")
    assert bogus.outcomes["unmapped"] == 1
    orphan = StatusEvent(
        department="publicworks",
        external_event_id="x1",
        external_id="999999",
        hub_reference="not-a-case",
        raw_code="Closed",
        occurred_at=datetime.now(UTC),
    )
    assert sync.apply("publicworks", [orphan], source="push").outcomes["orphan"] == 1
    with hub.uow() as uow:
        case = uow.cases.get(case_id)
        alerts = [e for e in uow.timeline.for_case(case_id) if e.kind == "status_unmapped"]
        order = uow.work_orders.get(case_id, "publicworks")
    assert case.status is CaseStatus.RESOLVED
    assert alerts and alerts[0].level.value == "alert" and "Bogus" in alerts[0].message
    assert order.raw_status == "Dispatch"  # the department's latest word is kept raw
    counts = inbound_counts(hub, "publicworks")
    assert counts["unmapped"] == 1 and counts["orphan"] == 1 and counts["refused"] == 1
    await hub.aclose()


async def test_one_page_follows_each_work_order_it_writes_linked_or_found_by_reference(
    city,
) -> None:
    """A page is read set-wise at its start. Each event must still see what the page's
    earlier events wrote: the work order and case of the first case (linked) are read
    once for the page and anew after each write; the second case's record is found by
    hub reference and linked by the page's first event. A second copy of an event inside
    the page is a duplicate."""
    hub, cases, orders = await delivered_cases(city, 2)
    linked_id, unlinked_id = (c.hub_id for c in cases)
    with hub.uow() as uow:  # as if the department's record was seen before the create's answer
        uow.work_orders.update(unlinked_id, "publicworks", external_id=None)
        uow.commit()

    def steps(case_id: str, *, by_reference: bool) -> list[StatusEvent]:
        order = orders[case_id]
        made = [event(order, code, seq, f"{case_id}-{code}-{seq}") for code, seq in STEPS]
        if by_reference:
            made = [e.model_copy(update={"hub_reference": case_id}) for e in made]
        return made

    # Out of order, the first event twice, and on the linked case a Dispatch in the same
    # second as its Closed, after it: only the work order as Closed left it makes that
    # Dispatch stale (a tie the lifecycle puts before), not a refused move back.
    linked = steps(linked_id, by_reference=False)
    tie = event(orders[linked_id], "Dispatch", "0003", "same-second")
    page = [*reversed(linked), tie, *reversed(steps(unlinked_id, by_reference=True)), linked[0]]
    result = StatusSync(hub).apply("publicworks", page, source="poll")
    assert dict(result.outcomes) == {"no_op": 2, "applied": 4, "stale": 1, "duplicate": 1}
    for case_id in (linked_id, unlinked_id):
        with hub.uow() as uow:
            order = uow.work_orders.get(case_id, "publicworks")
            case = uow.cases.get(case_id)
            changes = [e.detail["raw_code"] for e in uow.timeline.for_case(case_id)
                       if e.kind == "status_changed" and e.source == "poll"]  # fmt: skip
            rows = uow.status_updates.between(datetime.min.replace(tzinfo=UTC), datetime.now(UTC))
        assert order.external_id == orders[case_id].external_id and order.raw_status == "Closed"
        assert case.status is CaseStatus.RESOLVED
        assert changes == ["Dispatch", "Closed"]  # in the department's order
        assert [(u.raw_code, u.status) for u in rows if u.case_id == case_id][-2:] == [
            ("Dispatch", "onsite"),
            ("Closed", "resolved"),
        ]
    assert inbound_counts(hub, "publicworks") == {"no_op": 2, "applied": 4, "stale": 1}
    await hub.aclose()


STEPS = [("New", "0001"), ("Dispatch", "0002"), ("Closed", "0003")]


def test_poll_window_widens_across_the_fall_back_hour() -> None:
    # 01:50 EDT on 2026-11-01 (05:50Z); the clocks go back at 06:00Z to 01:00 EST.
    watermark = datetime(2026, 11, 1, 5, 50, tzinfo=UTC)
    now = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST
    since = poll_since(watermark, overlap=120, zone=NY, now=now)
    assert since == watermark - timedelta(minutes=2, hours=1)
    # 01:05 EST (06:05Z) is naive "01:05": the local query from `since` still covers it
    assert since.astimezone(NY).replace(tzinfo=None) <= datetime(2026, 11, 1, 1, 5)
    same = poll_since(watermark, overlap=120, zone=NY, now=watermark + timedelta(minutes=5))
    assert same == watermark - timedelta(minutes=2)
    spring = datetime(2026, 3, 8, 6, 59, tzinfo=UTC)  # 01:59 EST, then 03:00 EDT
    assert poll_since(spring, overlap=0, zone=NY, now=spring + timedelta(minutes=5)) == (
        spring - timedelta(hours=1)
    )


async def test_naive_department_times_across_dst_are_found_and_stored_in_utc(city) -> None:
    hub, _cases, orders = await delivered_cases(city, 2)
    (a_id, a), (b_id, b) = orders.items()
    simulator = sim(city)
    # The crew's tablets write naive New York wall time; both land in the repeated hour.
    for order, status, stamp in (
        (a, "Dispatch", "2026-11-01T01:50:00"),
        (b, "Closed", "2026-11-01T01:05:00"),
    ):
        simulator.rewrite(int(order.external_id), Status=status, DateTimeModified=stamp)
    with hub.uow() as uow:  # last poll reached 01:50 EDT
        uow.cursors.set("publicworks", datetime(2026, 11, 1, 5, 50, tzinfo=UTC))
        uow.commit()
    clock = lambda: datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # noqa: E731
    result = await StatusSync(hub, clock=clock).poll("publicworks")
    assert result.outcomes["applied"] == 2  # 01:05 EST was not skipped
    with hub.uow() as uow:
        assert uow.cases.get(b_id).status is CaseStatus.RESOLVED
        got = uow.cases.get(a_id)
        watermark = uow.cursors.get("publicworks")
    assert got.status is CaseStatus.ONSITE
    assert got.updated_datetime == datetime(2026, 11, 1, 5, 50, tzinfo=UTC)  # EDT reading
    assert watermark == datetime(2026, 11, 1, 5, 50, tzinfo=UTC)  # never moved backwards
    await hub.aclose()
