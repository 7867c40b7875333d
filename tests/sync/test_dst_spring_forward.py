"""Spring-forward: 02:00-02:59 never happens (New York, Sunday 2026-03-08: 01:59:59 EST
is 06:59:59Z, then 03:00 EDT = 07:00Z). A department stamp of 02:30 is read with the
offset before the change (a clock not yet set forward): 02:30 EST = 07:30Z, always, on
every path; nothing raises and the status sync applies it like any other time."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from hub.mapping.engine import local_to_utc, wall_readings
from hub.model import CaseStatus
from hub.services.sync import StatusSync, poll_since
from hub.services.webhooks import WebhookService, parse_generic, signature_header
from tests.sync.conftest import SECRET_ENV, sim
from tests.sync.test_status_in import delivered_cases

pytestmark = pytest.mark.timeout(120)

NY = ZoneInfo("America/New_York")
GAP = datetime(2026, 3, 8, 2, 30)  # naive wall time that does not exist


def test_a_nonexistent_wall_time_has_one_fixed_reading() -> None:
    readings = {local_to_utc(GAP, NY) for _ in range(3)}
    assert readings == {datetime(2026, 3, 8, 7, 30, tzinfo=UTC)}  # 03:30 EDT
    # The instant it became is an ordinary one: one reading only.
    only = datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    assert wall_readings(only, NY) == (only, only)
    # Around the gap the ordinary times are what they say.
    assert local_to_utc(datetime(2026, 3, 8, 1, 59), NY) == datetime(2026, 3, 8, 6, 59, tzinfo=UTC)
    assert local_to_utc(datetime(2026, 3, 8, 3, 0), NY) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_the_fall_back_readings_are_both_instants() -> None:
    first = datetime(2026, 11, 1, 5, 40, tzinfo=UTC)  # 01:40 EDT
    second = datetime(2026, 11, 1, 6, 40, tzinfo=UTC)  # 01:40 EST
    assert local_to_utc(datetime(2026, 11, 1, 1, 40), NY) == first
    assert wall_readings(first, NY) == (first, second) == wall_readings(second, NY)


def test_poll_since_across_the_gap_is_plain() -> None:
    watermark = datetime(2026, 3, 8, 6, 50, tzinfo=UTC)  # 01:50 EST
    now = datetime(2026, 3, 8, 7, 40, tzinfo=UTC)  # 03:40 EDT
    since = poll_since(watermark, overlap=120, zone=NY, now=now)
    assert since <= watermark.replace(minute=48)  # never later than the overlap asks


async def test_a_webhook_stamped_in_the_gap_is_applied(city) -> None:
    hub, _cases, orders = await delivered_cases(city, 1)
    case_id, order = next(iter(orders.items()))
    event = {
        "event_id": "g1",
        "work_order_id": order.external_id,
        "status": "Closed",
        "occurred_at": GAP.isoformat(),
    }
    body = json.dumps(event).encode()
    (parsed,) = parse_generic(body, "publicworks", NY)
    assert parsed.occurred_at == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    now = datetime(2026, 3, 8, 7, 35, tzinfo=UTC)
    service = WebhookService(hub, sync=StatusSync(hub, clock=lambda: now, actor="webhook"))
    result = await service.receive(
        "publicworks", body, signature_header(os.environ[SECRET_ENV], body)
    )
    assert result.as_dict()["applied"] == 1
    with hub.uow() as uow:
        assert uow.cases.get(case_id).status is CaseStatus.RESOLVED
        assert uow.work_orders.get(case_id, "publicworks").raw_status == "Closed"
    await hub.aclose()


async def test_a_poll_stamped_in_the_gap_is_applied(city, monkeypatch) -> None:
    hub, _cases, orders = await delivered_cases(city, 1)
    _case_id, order = next(iter(orders.items()))
    simulator = sim(city)
    monkeypatch.setattr(simulator, "local_now", lambda: GAP)
    simulator.advance(1, close=True)
    events = await hub.adapter("publicworks").get_status([order.external_id])
    assert events[0].occurred_at == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    now = datetime(2026, 3, 8, 7, 35, tzinfo=UTC)
    result = StatusSync(hub, clock=lambda: now).apply("publicworks", events, source="poll")
    assert result.outcomes["applied"] == 1
    await hub.aclose()
