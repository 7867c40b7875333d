"""The GIS hold sweep (``gis:release-overdue``) reads the held cases set-wise.

Its statements per sweep must not grow with the number of held cases (it once ran one
outbox query per held case, twice: in the overdue check and in the lost-enrich check), and
what it releases and re-queues must stay what the per-case reading decided.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from adapters.gis.plugin import _release_overdue, enrichment_report
from hub.model import Case, utcnow
from hub.services.intake import IntakeService
from hub.services.runtime import Hub
from hub.store import tables as t
from hub.testing.harness import SimulatedCity, simulated_city
from hub.testing.simulators.gis import WARD_3_AT
from tests.statements import statements

GIS = "gis"


@pytest.fixture
def city(tmp_path: Path, db_url: str) -> Iterator[SimulatedCity]:
    with simulated_city(tmp_path / "city", database_url=db_url, gis=True) as city:
        yield city


def hold(hub: Hub, first: int, count: int) -> list[Case]:
    """Potholes routed by ward: intake holds each create for the GIS (cache miss)."""
    cases = [
        Case(
            source_system="test",
            source_id=f"held-{n}",
            service_code="POTHOLE",
            lat=WARD_3_AT[0],
            long=WARD_3_AT[1],
        )
        for n in range(first, first + count)
    ]
    IntakeService(hub).submit_many(cases)
    return cases


def held_ids(hub: Hub) -> set[str]:
    with hub.uow() as uow:
        query = select(t.outbox.c.case_id).where(t.outbox.c.state == "held")
        return set(uow.connection.execute(query).scalars())


def test_sweep_statements_do_not_grow_with_the_held_cases(city: SimulatedCity) -> None:
    hub = city.hub()
    counts = []
    for first, count in ((0, 5), (5, 45)):  # 5 held cases, then 50
        cases = hold(hub, first, count)
        assert {c.hub_id for c in cases} <= held_ids(hub)
        with statements(hub.engine) as sent:
            result = _release_overdue(hub)
        # Nothing is overdue (default limit 300 s) and every case has its enrich row.
        assert result == {"overdue": 0, "released": 0, "enrich_requeued": 0}
        counts.append(len(sent))
    assert len(held_ids(hub)) == 50
    assert counts[0] == counts[1], f"statements per sweep: {counts} for 5 and 50 held cases"
    hub.dispose()


def test_sweep_releases_and_requeues_exactly_what_it_did_per_case(city: SimulatedCity) -> None:
    hub = city.hub()
    overdue_a, overdue_b, lost, not_ours, still_a, still_b = (c.hub_id for c in hold(hub, 0, 6))
    with hub.uow() as uow:
        o = t.outbox.c
        an_hour_ago = utcnow() - timedelta(hours=1)
        uow.connection.execute(
            update(t.outbox)
            .where(o.case_id.in_([overdue_a, overdue_b, not_ours]), o.state == "held")
            .values(created_at=an_hour_ago)
        )
        uow.connection.execute(
            delete(t.outbox).where(o.case_id.in_([lost, not_ours]), o.operation == "enrich")
        )
        case = uow.cases.get(not_ours)  # held, but no longer waiting for the GIS
        version = case.version
        case.attributes = {**case.attributes, "gis_status": "pending"}
        case.version += 1
        uow.cases.save(case, expected_version=version)
        uow.commit()

    assert _release_overdue(hub) == {"overdue": 2, "released": 2, "enrich_requeued": 1}

    assert held_ids(hub) == {lost, not_ours, still_a, still_b}
    with hub.uow() as uow:
        got = uow.cases.get_many([overdue_a, overdue_b, lost, not_ours, still_a])
        enrich = {
            item.case_id
            for case_id in (lost, not_ours)
            for item in uow.outbox.for_case(case_id)
            if item.operation == "enrich"
        }
        kinds = [e.kind for e in uow.timeline.for_case(overdue_a)]
    assert [got[i].attributes["gis_status"] for i in (overdue_a, overdue_b)] == ["unavailable"] * 2
    assert got[lost].attributes["gis_status"] == "awaiting"
    assert got[not_ours].attributes["gis_status"] == "pending"
    assert enrich == {lost}  # re-queued for the awaiting case only
    assert "enrichment_unavailable" in kinds and "released" in kinds
    # A second sweep finds nothing more to do, and the report agrees.
    assert _release_overdue(hub) == {"overdue": 0, "released": 0, "enrich_requeued": 0}
    assert enrichment_report(hub)["awaiting_without_job"] == []
    hub.dispose()
