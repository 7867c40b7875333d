"""A later poll whose overlap window holds more changes than one page: it must page on
through the overlap to the new changes, not stop at its first page for ever (the
10,000-case soak's code-enforcement closures that never arrived: every poll re-read the
same first page, which ended before the stored watermark)."""

from __future__ import annotations

import pytest

from hub.services.runtime import Hub
from hub.services.sync import StatusSync
from tests.services.test_codeenforcement_delivery import DEPT, drain, feed

pytestmark = pytest.mark.timeout(120)


async def test_a_poll_pages_through_a_full_overlap_to_the_new_changes(city) -> None:
    config = city.config()
    config.departments[DEPT].settings["page_size"] = 7
    hub = Hub(config, database=city.database_url)
    cases = feed(hub, 35)
    await drain(hub)
    simulator = city.simulator(DEPT)
    simulator.advance(30, close=True)  # a burst: 30 closures, all within the overlap
    sync = StatusSync(hub, actor="test")
    first = await sync.poll(DEPT)
    assert first.outcomes["applied"] == 30
    # The poll says how many pages it read, and where its time went (job_runs' detail).
    detail = first.as_dict()
    assert detail["pages"] >= 30 // 7 and first.received >= 30
    assert detail["read_seconds"] > 0 and detail["apply_seconds"] > 0
    simulator.advance(5, close=True)  # the last five, after the stored watermark
    later = await sync.poll(DEPT)
    assert later.outcomes["applied"] == 5
    with hub.uow() as uow:
        assert all(uow.cases.get(c.hub_id).status.is_final for c in cases)
    await hub.aclose()
