"""Public-works status polls page by time window: a backlog larger than
``max_changes_per_poll`` (a long outage, a bulk update) is read one ``DateModifiedEnd``
window per page, against the real Cityworks-like simulator on loopback and the hub's
StatusSync, on SQLite and PostgreSQL. No change is skipped or applied twice; a burst
inside one second is read whole and the poll still ends."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from adapters.publicworks import PublicWorksAdapter, PublicWorksConfig
from adapters.publicworks.client import utc_to_local
from hub.adapters import StatusPage
from hub.services.dispatch import Dispatcher
from hub.services.runtime import Hub
from hub.services.sync import StatusSync, inbound_counts
from hub.testing.harness import SimulatedCity, simulated_city
from hub.testing.simulators.base import SimulatorServer
from hub.testing.simulators.publicworks import DEFAULT_PASSWORD, PublicWorksSimulator
from tests.services.conftest import feed

pytestmark = pytest.mark.timeout(180)
DEPT = "publicworks"
LIMIT = 50
SEARCH, BY_IDS = "Ams/ServiceRequest/Search", "Ams/ServiceRequest/ByIds"


@pytest.fixture
def city(tmp_path: Path, db_url: str) -> Iterator[SimulatedCity]:
    with simulated_city(tmp_path / "city", database_url=db_url, timeout_seconds=2.0) as c:
        yield c


@dataclass
class Page:
    """One poll_changes call: the calls it made and what it returned."""

    calls: list[tuple[str, dict[str, Any], Any]] = field(default_factory=list)
    page: StatusPage | None = None

    def searches(self) -> list[dict[str, Any]]:
        return [data for method, data, _ in self.calls if method == SEARCH]

    def records_read(self) -> int:
        return sum(len(value) for method, _, value in self.calls if method == BY_IDS)


def record_pages(adapter: PublicWorksAdapter, monkeypatch) -> list[Page]:
    """Wrap the adapter so each page's Cityworks calls are logged under it."""
    pages: list[Page] = []
    call, poll = adapter.client.call, adapter.poll_changes

    async def logged_call(method: str, data: dict[str, Any], **kwargs: Any) -> Any:
        value = await call(method, data, **kwargs)
        pages[-1].calls.append((method, dict(data), value))
        return value

    async def logged_poll(since: datetime) -> StatusPage:
        pages.append(Page())
        pages[-1].page = await poll(since)
        return pages[-1].page

    monkeypatch.setattr(adapter.client, "call", logged_call)
    monkeypatch.setattr(adapter, "poll_changes", logged_poll)
    return pages


def stepping_clock(start: datetime, zone, gaps: Iterator[float]) -> Callable[[], datetime]:
    """A department clock from `start` (UTC) moving on by the next gap at each stamp."""
    state = {"at": start}

    def local_now() -> datetime:
        state["at"] += timedelta(seconds=next(gaps))
        return state["at"].astimezone(zone).replace(tzinfo=None)

    return local_now


async def delivered_hub(city: SimulatedCity, n: int) -> tuple[Hub, dict[str, str]]:
    """A hub paging at LIMIT with `n` cases delivered: {RequestId: case id}."""
    config = city.config()
    config.departments[DEPT].settings["max_changes_per_poll"] = LIMIT
    hub = Hub(config, database=city.database_url)
    cases = feed(hub, n)
    await Dispatcher(hub, worker_id="test-worker").run(until_empty=True, timeout=60)
    with hub.uow() as uow:
        orders = {c.hub_id: uow.work_orders.get(c.hub_id, DEPT) for c in cases}
    assert all(o.external_id for o in orders.values())
    return hub, {o.external_id: case_id for case_id, o in orders.items()}


def set_watermark(hub: Hub, at: datetime) -> None:
    with hub.uow() as uow:
        uow.cursors.set(DEPT, at)
        uow.commit()


def assert_hub_holds_department_state(hub: Hub, simulator, by_ext: dict[str, str]) -> None:
    """Every case shows the simulator's status, applied by exactly one poll event."""
    mapping = hub.mapping(DEPT)
    records = {str(r["RequestId"]): r["Status"] for r in simulator.snapshot()["records"]}
    with hub.uow() as uow:
        for external_id, case_id in by_ext.items():
            order = uow.work_orders.get(case_id, DEPT)
            assert order.raw_status == records[external_id], case_id
            meaning = mapping.map_status_in(order.raw_status)
            assert uow.cases.get(case_id).status is meaning.status, case_id
            polled = [u for u in uow.status_updates.for_case(case_id) if u.source == "poll"]
            assert len(polled) == 1, f"{case_id} applied {len(polled)} times"
    assert inbound_counts(hub, DEPT).get("applied") == len(by_ext)


async def test_a_backlog_over_the_limit_is_applied_in_windows_of_at_most_the_limit(
    city, monkeypatch
) -> None:
    hub, by_ext = await delivered_hub(city, 250)
    simulator = city.simulator(DEPT)
    assert isinstance(simulator, PublicWorksSimulator)
    # An outage an hour ago: changes at 25 a second, with a quiet ten minutes every 60.
    start = datetime.now(UTC) - timedelta(hours=1)
    gaps = (600.0 if n % 60 == 59 else 0.04 for n in itertools.count())
    monkeypatch.setattr(simulator, "local_now", stepping_clock(start, simulator.zone, gaps))
    ids = sorted(int(i) for i in by_ext)
    simulator.advance(100, request_ids=ids[:100])  # New → Dispatch
    simulator.advance(150, request_ids=ids[100:], close=True)
    set_watermark(hub, start - timedelta(minutes=5))
    pages = record_pages(hub.adapter(DEPT), monkeypatch)

    result = await StatusSync(hub, actor="test").poll(DEPT)

    assert result.outcomes["applied"] == 250
    assert len(pages) >= 250 // LIMIT + 1
    assert [p.page.more for p in pages] == [True] * (len(pages) - 1) + [False]
    for page in pages:
        assert page.records_read() <= LIMIT, [p.records_read() for p in pages]
    for page, following in itertools.pairwise(pages):
        # The window read is the last fitting Search; the next page begins at its end.
        end = utc_to_local(page.page.next_watermark, simulator.zone)
        read = [s for s in page.searches() if s.get("DateModifiedEnd") == end]
        assert read, page.searches()
        assert following.searches()[0] == {"DateModifiedBegin": end}
    assert sum(p.records_read() for p in pages) - 250 == result.outcomes["duplicate"]
    assert_hub_holds_department_state(hub, simulator, by_ext)
    assert (await StatusSync(hub, actor="test").poll(DEPT)).outcomes["applied"] == 0
    await hub.aclose()


@pytest.mark.parametrize("resolution", ["seconds", "microseconds"])
async def test_a_burst_over_the_limit_inside_one_second_is_read_whole(
    city, monkeypatch, resolution: str
) -> None:
    hub, by_ext = await delivered_hub(city, 120)
    simulator = city.simulator(DEPT)
    assert isinstance(simulator, PublicWorksSimulator)
    # A supervisor's bulk close: 120 closures within one second, ten minutes ago.
    burst = (datetime.now(UTC) - timedelta(minutes=10)).replace(microsecond=0)
    gaps = itertools.chain([0.0], itertools.repeat(0.000001))
    monkeypatch.setattr(simulator, "local_now", stepping_clock(burst, simulator.zone, gaps))
    simulator.timestamp_resolution = resolution
    simulator.advance(120, close=True)
    set_watermark(hub, burst - timedelta(minutes=5))
    pages = record_pages(hub.adapter(DEPT), monkeypatch)

    result = await StatusSync(hub, actor="test").poll(DEPT)

    assert result.outcomes["applied"] == 120
    assert pages[-1].page.more is False and len(pages) <= 5
    whole = [p for p in pages if p.records_read() == 120]
    assert whole and all(p.page.more for p in whole)
    for page in whole:  # read whole only as a one-second window
        begin = page.searches()[0]["DateModifiedBegin"]
        second = datetime.fromisoformat(begin) + timedelta(seconds=1)
        assert utc_to_local(page.page.next_watermark, simulator.zone) == second.isoformat()
    assert_hub_holds_department_state(hub, simulator, by_ext)
    await hub.aclose()


# ------------------------------------------------------------- the adapter on its own


@pytest.fixture(scope="module")
def server():
    with SimulatorServer(PublicWorksSimulator()) as running:
        yield running


@pytest.fixture
async def adapter(server):
    server.simulator.reset()
    server.simulator.set_faults("none")
    config = PublicWorksConfig(
        base_url=server.url,
        login_name="hub",
        password=SecretStr(DEFAULT_PASSWORD),
        max_changes_per_poll=LIMIT,
    )
    adapter = PublicWorksAdapter(config)
    yield adapter
    await adapter.aclose()


async def test_changes_that_fit_make_one_page_ending_at_the_newest_change(
    adapter, server, monkeypatch
) -> None:
    simulator = server.simulator
    since = datetime.now(UTC) - timedelta(seconds=5)
    references = [f"case-{n}" for n in range(LIMIT)]
    for reference in references:
        simulator.add_record(reference)
    changed = simulator.advance(LIMIT, close=True)
    pages = record_pages(adapter, monkeypatch)

    page = await adapter.poll_changes(since)

    assert page.more is False
    assert sorted(e.hub_reference for e in page.events) == sorted(references)
    assert page.next_watermark == max(e.occurred_at for e in page.events)
    newest = max(c["DateModified"] for c in changed)
    assert utc_to_local(page.next_watermark, simulator.zone) == newest[:19]
    assert pages[0].searches() == [{"DateModifiedBegin": utc_to_local(since, simulator.zone)}]


def test_the_limit_is_validated() -> None:
    with pytest.raises(ValueError, match="max_changes_per_poll"):
        PublicWorksConfig(
            base_url="http://cw.example",
            login_name="hub",
            password=SecretStr("x"),
            max_changes_per_poll=0,
        )


async def test_windows_across_the_fall_back_hour_miss_nothing(adapter, server) -> None:
    """Naive local wall time repeats 01:00-02:00 on 2 Nov 2025 in New York: windows are
    whole UTC seconds, so each begins exactly where the last ended and none is skipped."""
    simulator, zone = server.simulator, server.simulator.zone
    adapter.config.max_changes_per_poll = 10
    first = datetime(2025, 11, 2, 4, 10, tzinfo=UTC)  # 00:10 EDT; 06:00Z is 01:00 EST
    ids = simulator.seed((f"case-{n}", "Closed") for n in range(60))
    for n, rid in enumerate(ids):  # every 4 minutes: 00:10 EDT … 03:06 EST
        at = first + timedelta(minutes=4 * n)
        simulator.rewrite(rid, DateTimeModified=at.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S"))
    since, seen, pages = first - timedelta(minutes=1), set(), 0
    while True:
        page = await adapter.poll_changes(since)
        pages += 1
        assert len(page.events) <= 10
        seen.update(e.external_id for e in page.events)
        if not page.more:
            break
        assert page.next_watermark > since
        since = page.next_watermark
    assert seen == {str(i) for i in ids}
    assert pages >= 6
