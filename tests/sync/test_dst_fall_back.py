"""Fall-back: 01:00-01:59 happens twice (New York, Sunday 2026-11-01: 01:59:59 EDT is
05:59:59Z, then the clocks go back to 01:00 EST = 06:00Z). Public works (Cityworks) stamps
naive wall time, so 01:40 may be 05:40Z or 06:40Z and the adapter reads the first. A crew
that dispatched at 01:50 EDT and closed at 01:40 EST closed *after*: the closure must not
be refused as stale, by poll or by webhook, and no event may fall behind the watermark."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hub.model import CaseStatus
from hub.services.sync import APPLIED, STALE, StatusSync, poll_since
from hub.services.webhooks import WebhookService, parse_generic, signature_header
from hub.testing.simulators.publicworks import PublicWorksSimulator
from tests.sync.conftest import SECRET_ENV, sim
from tests.sync.test_status_in import delivered_cases

pytestmark = pytest.mark.timeout(120)

NY = ZoneInfo("America/New_York")
DAY = datetime(2026, 11, 1)  # naive local date of the fall-back
AMBIGUOUS_KIND = "status_time_ambiguous"


def utc(hour: int, minute: int) -> datetime:
    return datetime(2026, 11, 1, hour, minute, tzinfo=UTC)


def wall(hour: int, minute: int) -> datetime:
    return DAY.replace(hour=hour, minute=minute)


def at(simulator: PublicWorksSimulator, stamp: datetime, monkeypatch) -> None:
    """The department's clock shows naive `stamp` for the next changes."""
    monkeypatch.setattr(simulator, "local_now", lambda: stamp)


def clock(value: datetime) -> Callable[[], datetime]:
    return lambda: value


def state(hub, case_id: str) -> tuple[str | None, CaseStatus]:
    with hub.uow() as uow:
        order = uow.work_orders.get(case_id, "publicworks")
        return order.raw_status, uow.cases.get(case_id).status


def timeline_kinds(hub, case_id: str) -> list[str]:
    with hub.uow() as uow:
        return [e.kind for e in uow.timeline.for_case(case_id)]


async def test_a_closure_in_the_second_0140_after_a_0150_dispatch_is_applied(
    city, monkeypatch
) -> None:
    hub, _cases, orders = await delivered_cases(city, 1)
    (case_id, order), simulator = next(iter(orders.items())), sim(city)
    adapter = hub.adapter("publicworks")

    at(simulator, wall(1, 50), monkeypatch)  # 01:50 EDT = 05:50Z
    simulator.advance(1, status="Inspect")
    first = StatusSync(hub, clock=clock(utc(5, 55)))
    assert (
        first.apply(
            "publicworks", await adapter.get_status([order.external_id]), source="poll"
        ).outcomes[APPLIED]
        == 1
    )
    assert state(hub, case_id) == ("Inspect", CaseStatus.ONSITE)

    at(simulator, wall(1, 40), monkeypatch)  # 01:40 EST = 06:40Z, read as 05:40Z
    simulator.advance(1, close=True)
    events = await adapter.get_status([order.external_id])
    assert events[0].occurred_at == utc(5, 40)  # the adapter's (first) reading
    later = StatusSync(hub, clock=clock(utc(6, 45)))
    result = later.apply("publicworks", events, source="poll")
    assert result.outcomes[STALE] == 0 and result.outcomes[APPLIED] == 1
    assert state(hub, case_id) == ("Closed", CaseStatus.RESOLVED)
    assert AMBIGUOUS_KIND in timeline_kinds(hub, case_id)  # staff see why
    await hub.aclose()


async def test_an_older_step_of_the_repeated_hour_never_undoes_a_closure(city, monkeypatch) -> None:
    """The other way round: the crew closed at 01:50 and a late copy of its 01:40 Inspect
    arrives after the hour repeated. The lifecycle orders them: the closure stays."""
    hub, _cases, orders = await delivered_cases(city, 1)
    (case_id, order), simulator = next(iter(orders.items())), sim(city)
    adapter = hub.adapter("publicworks")
    at(simulator, wall(1, 40), monkeypatch)
    simulator.advance(1, status="Inspect")
    early = await adapter.get_status([order.external_id])
    at(simulator, wall(1, 50), monkeypatch)
    simulator.advance(1, close=True)
    closed = await adapter.get_status([order.external_id])
    sync = StatusSync(hub, clock=clock(utc(6, 55)))
    assert sync.apply("publicworks", closed, source="push").outcomes[APPLIED] == 1
    late = sync.apply("publicworks", early, source="poll")
    assert late.outcomes[STALE] == 1
    assert state(hub, case_id) == ("Closed", CaseStatus.RESOLVED)
    with hub.uow() as uow:  # refused as older, not warned about as a backwards move
        assert "status_refused" not in {e.kind for e in uow.timeline.for_case(case_id)}
    await hub.aclose()


async def test_before_the_hour_repeats_its_times_are_not_ambiguous(city, monkeypatch) -> None:
    """At 01:55 EDT no 01:xx EST exists yet: an older 01:40 is plainly stale."""
    hub, _cases, orders = await delivered_cases(city, 1)
    (case_id, order), simulator = next(iter(orders.items())), sim(city)
    adapter = hub.adapter("publicworks")
    at(simulator, wall(1, 40), monkeypatch)
    simulator.advance(1, status="Dispatch")
    dispatch = await adapter.get_status([order.external_id])
    at(simulator, wall(1, 50), monkeypatch)
    simulator.advance(1, status="Inspect")
    inspect = await adapter.get_status([order.external_id])
    sync = StatusSync(hub, clock=clock(utc(5, 55)))
    assert sync.apply("publicworks", inspect, source="poll").outcomes[APPLIED] == 1
    assert sync.apply("publicworks", dispatch, source="poll").outcomes[STALE] == 1
    assert AMBIGUOUS_KIND not in timeline_kinds(hub, case_id)
    await hub.aclose()


async def test_polls_across_the_repeated_hour_lose_nothing(city, monkeypatch) -> None:
    """The watermark reaches 01:58 EDT; then the hour repeats and two requests change at
    01:10 and 01:30 EST: both are found by the next poll, one after a change at 01:58."""
    hub, _cases, orders = await delivered_cases(city, 2)
    simulator = sim(city)
    (case_a, order_a), (case_b, order_b) = orders.items()
    for rid in list(simulator.records):  # created "yesterday"
        simulator.rewrite(rid, DateTimeModified="2026-10-31T12:00:00")
    with hub.uow() as uow:
        uow.cursors.set("publicworks", utc(5, 0))
        uow.commit()
    ids = [int(order_a.external_id)]
    at(simulator, wall(1, 58), monkeypatch)  # 05:58Z
    simulator.advance(1, request_ids=ids, status="Inspect")
    first = await StatusSync(hub, clock=clock(utc(5, 59))).poll("publicworks")
    assert first.outcomes[APPLIED] == 1
    at(simulator, wall(1, 10), monkeypatch)  # 06:10Z
    simulator.advance(1, request_ids=[int(order_b.external_id)], status="Inspect")
    at(simulator, wall(1, 30), monkeypatch)  # 06:30Z
    simulator.advance(1, request_ids=ids, close=True)
    second = await StatusSync(hub, clock=clock(utc(6, 40))).poll("publicworks")
    assert second.outcomes[APPLIED] == 2 and second.outcomes[STALE] == 0
    assert state(hub, case_a) == ("Closed", CaseStatus.RESOLVED)
    assert state(hub, case_b) == ("Inspect", CaseStatus.ONSITE)
    await hub.aclose()


async def test_paged_polls_across_the_repeated_hour_lose_nothing(city, monkeypatch) -> None:
    """Many requests change through both 01:xx hours and after; pages of 3 (whole UTC
    seconds, resumed without the overlap) with polls every ten minutes of hub time."""
    hub, _cases, orders = await delivered_cases(city, 12)
    simulator = sim(city)
    hub.adapter("publicworks").config.max_changes_per_poll = 3
    for rid in list(simulator.records):
        simulator.rewrite(rid, DateTimeModified="2026-10-31T12:00:00")
    with hub.uow() as uow:
        uow.cursors.set("publicworks", utc(4, 30))
        uow.commit()
    ids = sorted(int(o.external_id) for o in orders.values())
    start = utc(4, 45)  # 00:45 EDT; one change every 12 minutes up to 02:57 EST
    changes = [(start + timedelta(minutes=12 * n), rid) for n, rid in enumerate(ids)]
    now = start
    while now < utc(8, 30):
        now += timedelta(minutes=10)
        # The department makes the changes due by `now` (its naive wall clock), then polled.
        while changes and changes[0][0] <= now:
            stamp, rid = changes.pop(0)
            at(simulator, stamp.astimezone(NY).replace(tzinfo=None), monkeypatch)
            simulator.advance(1, request_ids=[rid], status="Inspect")
        await StatusSync(hub, clock=clock(now)).poll("publicworks")
    for case_id in orders:
        assert state(hub, case_id) == ("Inspect", CaseStatus.ONSITE), case_id
    await hub.aclose()


# ----------------------------------------------------------------------------- webhooks


def generic(event_id: str, work_order: str, status: str, stamp: datetime) -> dict:
    return {
        "event_id": event_id,
        "work_order_id": work_order,
        "status": status,
        "occurred_at": stamp.isoformat(),  # naive: department wall time
    }


async def push(hub, events: list[dict], now: datetime) -> dict:
    body = json.dumps({"events": events}).encode()
    signature = signature_header(os.environ[SECRET_ENV], body)
    service = WebhookService(hub, sync=StatusSync(hub, clock=clock(now), actor="webhook"))
    return (await service.receive("publicworks", body, signature)).as_dict()


async def test_webhooks_in_the_repeated_hour_order_like_the_poll(city) -> None:
    hub, _cases, orders = await delivered_cases(city, 2)
    (case_a, order_a), (case_b, order_b) = orders.items()
    # Separate notifications: Inspect at 01:50 EDT, then Closed at 01:40 EST.
    a = order_a.external_id
    assert (await push(hub, [generic("a1", a, "Inspect", wall(1, 50))], utc(5, 51)))["applied"] == 1
    result = await push(hub, [generic("a2", a, "Closed", wall(1, 40))], utc(6, 41))
    assert result["applied"] == 1 and result["stale"] == 0
    assert state(hub, case_a) == ("Closed", CaseStatus.RESOLVED)
    # One notification with both, in the department's order.
    b = order_b.external_id
    both = [generic("b1", b, "Inspect", wall(1, 50)), generic("b2", b, "Closed", wall(1, 40))]
    result = await push(hub, both, utc(6, 41))
    assert result["applied"] == 1 and result["stale"] == 1  # the Inspect lost to Closed
    assert state(hub, case_b) == ("Closed", CaseStatus.RESOLVED)
    await hub.aclose()


def test_generic_webhook_times_are_read_like_the_adapters() -> None:
    body = json.dumps(
        {
            "events": [
                generic("e1", "1", "Closed", wall(1, 40)),
                generic("e2", "1", "Closed", wall(1, 40).replace(hour=3)),
            ]
        }
    ).encode()
    first, after = parse_generic(body, "publicworks", NY)
    assert first.occurred_at == utc(5, 40)  # first occurrence, deterministically
    assert after.occurred_at == utc(8, 40)
    aware = generic("e3", "1", "Closed", wall(1, 40))
    aware["occurred_at"] = "2026-11-01T01:40:00-05:00"  # an offset decides: kept
    (kept,) = parse_generic(json.dumps(aware).encode(), "publicworks", NY)
    assert kept.occurred_at == utc(6, 40)


# ----------------------------------------------------------------------------- poll_since


def test_a_watermark_inside_the_second_occurrence_rereads_the_whole_hour() -> None:
    """A watermark of 01:10 EST (06:10Z, a page end in UTC) with a naive local query from
    01:08 would skip 01:00-01:07 EST changes the department stamped before it committed
    them: the poll starts before the repeated hour instead."""
    since = poll_since(utc(6, 10), overlap=120, zone=NY, now=utc(6, 20))
    assert since.astimezone(NY).replace(tzinfo=None) < wall(1, 0)
    assert since >= utc(4, 0)  # at most an hour more than the hour itself
    # Outside the repeated hour nothing changes.
    assert poll_since(utc(7, 30), overlap=120, zone=NY, now=utc(7, 40)) == utc(7, 28)
