"""GIS enrichment and location routing with the real simulators on loopback.

Real Boston 311 records (read in place from shared/realworld, never copied) give the
addresses and coordinates; the GIS simulator's generated wards decide the route.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from adapters.gis.cache import MISS, TTLCache
from hub.model import Case, utcnow
from hub.services.dispatch import Dispatcher
from hub.services.intake import IntakeService
from hub.services.runtime import Hub
from hub.services.scheduler import Scheduler
from hub.store import tables as t
from hub.store.repository import DepartmentHealth
from hub.testing.harness import SimulatedCity, simulated_city
from hub.testing.simulators.gis import WARD_3_AT, GisSimulator

RECORDS = Path(__file__).resolve().parents[3] / "shared/realworld/311_records/boston"
WARD_3_TEAM = "District 03: North Dorchester"


@pytest.fixture
def city(tmp_path: Path, db_url: str) -> Iterator[SimulatedCity]:
    with simulated_city(tmp_path / "city", database_url=db_url, gis=True) as city:
        yield city


def real_records(limit: int = 12) -> list[dict[str, str]]:
    """Boston records with a street address and their own (non-default) coordinates."""
    path = RECORDS / "boston311-100.csv"
    # shared/ always sits beside the repository (CI included): missing data is a failure.
    assert path.exists(), f"{path} not available: the real records are read in place"
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            location = " ".join(row["location"].split())
            if not location or location.startswith("INTERSECTION") or not row["latitude"]:
                continue
            if (row["latitude"], row["longitude"]) == ("42.3594", "-71.0587"):
                continue  # the city-hall placeholder of un-geocoded records
            rows.append({"address": location, "lat": row["latitude"], "long": row["longitude"]})
    return rows[:limit]


def drain(hub: Hub, timeout: float = 20.0, *, until_empty: bool = True) -> None:
    async def run() -> None:
        await Dispatcher(hub, worker_id="test").run(until_empty=until_empty, timeout=timeout)
        await hub.aclose()

    asyncio.run(run())


def case(source_id: str, **fields) -> Case:
    return Case(source_system="test", source_id=source_id, service_code="POTHOLE", **fields)


def test_real_addresses_geocode_and_route_by_ward(city: SimulatedCity) -> None:
    records = real_records()
    gis: GisSimulator = city.simulator("gis")  # type: ignore[assignment]
    # The city's own address table, plus the real records' addresses at their coordinates.
    records.append({"address": "1 Test Sq, Boston, MA", "lat": WARD_3_AT[0], "long": WARD_3_AT[1]})
    url = f"{city.url('gis')}/__sim__/addresses"
    httpx.post(url, json={"addresses": records}).raise_for_status()
    hub = city.hub()
    cases = [case(f"addr-{n}", address_string=r["address"]) for n, r in enumerate(records)]
    started = time.perf_counter()
    IntakeService(hub).submit_many(cases)
    assert time.perf_counter() - started < 2.0, "intake waited for the GIS"
    drain(hub)
    with hub.uow() as uow:
        stored = uow.cases.get_many([c.hub_id for c in cases])
        orders = uow.work_orders.for_cases([c.hub_id for c in cases])
    for record, submitted in zip(records, cases, strict=True):
        got = stored[submitted.hub_id]
        lat, long = float(record["lat"]), float(record["long"])
        assert (got.lat, got.long) == pytest.approx((lat, long), abs=1e-6), record["address"]
        ward = gis.city.polygon_at(1, lat, long)["attributes"]["WARD"]
        district = gis.city.polygon_at(0, lat, long)["attributes"]["DISTRICT"]
        assert got.attributes["ward"] == ward and got.attributes["district"] == district
        assert got.attributes["gis_status"] == "done"
        assert got.team == (WARD_3_TEAM if ward == "3" else "Street Maintenance")
        assert orders[(got.hub_id, "publicworks")].delivery_state == "delivered"
    assert any(stored[c.hub_id].attributes["ward"] == "3" for c in cases)


def test_coordinates_only_get_an_address_and_the_nearest_asset(city: SimulatedCity) -> None:
    gis: GisSimulator = city.simulator("gis")  # type: ignore[assignment]
    pole = gis.city.assets[10][0]
    hub = city.hub()
    light = Case(
        source_system="test",
        source_id="light",
        service_code="STRLGHT",
        lat=pole["y"],
        long=pole["x"],
        attributes={"condition": "out"},
    )
    IntakeService(hub).submit(light)
    drain(hub)
    with hub.uow() as uow:
        got = uow.cases.get(light.hub_id)
        kinds = [e.kind for e in uow.timeline.for_case(light.hub_id)]
    assert got.attributes["asset_id"] == pole["ASSET_ID"]
    nearest = gis.city.nearest_address(pole["y"], pole["x"])
    assert got.address_string == (nearest["label"] if nearest else None)
    assert "enriched" in kinds and "awaiting_enrichment" not in kinds  # not location-routed


def test_gis_outage_does_not_block_intake_and_route_is_corrected_after_recovery(
    city: SimulatedCity,
) -> None:
    hub = city.hub()
    city.set_faults("gis", "outage")
    pothole = case("outage", lat=WARD_3_AT[0], long=WARD_3_AT[1])
    started = time.perf_counter()
    result = IntakeService(hub).submit(pothole)
    assert time.perf_counter() - started < 1.0
    assert result.route.department == "publicworks" and result.held is not None
    assert result.case.team == "Street Maintenance"  # service code alone, for now
    drain(hub, 1.0, until_empty=False)
    with hub.uow() as uow:
        order = uow.work_orders.get(pothole.hub_id, "publicworks")
        flags = [e.message for e in uow.timeline.for_case(pothole.hub_id) if e.kind == "flag"]
    assert order.delivery_state == "held" and "enrichment_pending" in flags
    city.set_faults("gis", "none")
    drain(hub)
    with hub.uow() as uow:
        got = uow.cases.get(pothole.hub_id)
        order = uow.work_orders.get(pothole.hub_id, "publicworks")
        kinds = [e.kind for e in uow.timeline.for_case(pothole.hub_id)]
    assert got.attributes["ward"] == "3" and got.team == WARD_3_TEAM
    assert "route_corrected" in kinds and order.delivery_state == "delivered"
    records = [
        r for r in city.state("publicworks")["records"] if r["OtherSystemId"] == pothole.hub_id
    ]
    assert len(records) == 1


def test_long_outage_dispatches_on_service_code_then_records_the_difference(
    tmp_path: Path,
) -> None:
    with simulated_city(tmp_path / "c", gis=True) as city:
        config = city.config()
        config.departments["gis"].settings["max_hold_seconds"] = 0.2
        hub = Hub(config, database=city.database_url)
        city.set_faults("gis", "outage")
        pothole = case("long-outage", lat=WARD_3_AT[0], long=WARD_3_AT[1])
        IntakeService(hub).submit(pothole)
        drain(hub, 2.5, until_empty=False)
        with hub.uow() as uow:
            order = uow.work_orders.get(pothole.hub_id, "publicworks")
            assert order.delivery_state == "delivered"  # not held forever
            assert uow.cases.get(pothole.hub_id).attributes["gis_status"] == "unavailable"
        city.set_faults("gis", "none")
        drain(hub)
        with hub.uow() as uow:
            got = uow.cases.get(pothole.hub_id)
            kinds = [e.kind for e in uow.timeline.for_case(pothole.hub_id)]
        assert got.attributes["ward"] == "3" and got.team == "Street Maintenance"
        assert "route_differs" in kinds and "enrichment_unavailable" in kinds


def test_a_hold_past_its_limit_is_released_by_the_sweep_while_the_gis_circuit_is_open(
    tmp_path: Path, db_url: str
) -> None:
    with simulated_city(tmp_path / "c", database_url=db_url, gis=True) as city:
        config = city.config()
        config.departments["gis"].settings["max_hold_seconds"] = 0.2
        hub = Hub(config, database=city.database_url)
        city.set_faults("gis", "outage")
        pothole = case("circuit-open", lat=WARD_3_AT[0], long=WARD_3_AT[1])
        IntakeService(hub).submit(pothole)
        with hub.uow() as uow:  # the circuit is open for an hour: no enrich attempt runs
            later = utcnow() + timedelta(hours=1)
            uow.departments.put(
                DepartmentHealth("gis", circuit="open", opened_at=utcnow(), retry_at=later)
            )
            uow.commit()
        drain(hub, 1.0, until_empty=False)
        with hub.uow() as uow:  # past max_hold_seconds, and nothing noticed
            assert uow.work_orders.get(pothole.hub_id, "publicworks").delivery_state == "held"
        scheduler = Scheduler(hub, worker_id="sweeper")
        [job] = [j for j in scheduler.plugin_jobs() if j.name == "gis:release-overdue"]
        assert asyncio.run(scheduler.periodic(job)) is True
        assert asyncio.run(scheduler.periodic(job)) is False  # the same slot runs once
        drain(hub, 2.0, until_empty=False)
        with hub.uow() as uow:
            order = uow.work_orders.get(pothole.hub_id, "publicworks")
            got = uow.cases.get(pothole.hub_id)
            events = uow.timeline.for_case(pothole.hub_id)
            runs = uow.connection.execute(
                select(t.job_runs.c.outcome, t.job_runs.c.detail).where(
                    t.job_runs.c.job == "gis:release-overdue"
                )
            ).all()
        assert order.delivery_state == "delivered"
        assert got.attributes["gis_status"] == "unavailable"
        assert any(
            e.kind == "enrichment_unavailable" and "max_hold_seconds" in e.message for e in events
        )
        assert [(r.outcome, r.detail["released"]) for r in runs] == [("ok", 1)]
        hub.dispose()


def test_the_sweep_is_only_declared_where_a_gis_is_configured(tmp_path: Path) -> None:
    with simulated_city(tmp_path / "plain") as city:
        names = [j.name for j in Scheduler(city.hub(), worker_id="w").plugin_jobs()]
    assert "gis:release-overdue" not in names and "payments:heal" not in names


def test_cache_is_bounded_in_size_and_time() -> None:
    now = [0.0]
    cache = TTLCache(maxsize=2, ttl=10, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", None)  # a cached "nothing there"
    assert cache.get("b") is None and cache.get("a") == 1
    cache.put("c", 3)  # evicts the least recently used ("b")
    assert cache.get("b") is MISS and len(cache) == 2
    now[0] = 11
    assert cache.get("a") is MISS and cache.get("c") is MISS
