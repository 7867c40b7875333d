"""Engine fixtures: a simulated city (real public-works server on loopback) on both stores."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.mapping import MappingSet
from hub.model import Case
from hub.services.intake import IntakeService
from hub.services.runtime import Hub
from hub.testing.generator import CaseGenerator
from hub.testing.harness import SimulatedCity, simulated_city


@pytest.fixture
def city(tmp_path: Path, db_url: str) -> Iterator[SimulatedCity]:
    with simulated_city(
        tmp_path / "city", database_url=db_url, timeout_seconds=0.5, hang_seconds=1.0
    ) as c:
        yield c


def publicworks_cases(mappings: MappingSet, n: int, *, seed: int = 1) -> list[Case]:
    """Realistic generated cases that route to public works (the department simulated)."""
    generator = CaseGenerator(mappings, seed=seed).generate(n * 20)
    routed = (c for c in generator if (r := mappings.route(c)) and r.department == "publicworks")
    cases = list(itertools.islice(routed, n))
    assert len(cases) == n
    return cases


def feed(hub: Hub, n: int, *, seed: int = 1) -> list[Case]:
    results = IntakeService(hub).submit_many(publicworks_cases(hub.mappings, n, seed=seed))
    assert all(r.created for r in results)
    return [r.case for r in results]


def department_records(city: SimulatedCity) -> dict[str, list[dict]]:
    """The department's own records, grouped by the hub reference each one carries."""
    by_reference: dict[str, list[dict]] = defaultdict(list)
    for record in city.state("publicworks")["records"]:
        by_reference[record["OtherSystemId"]].append(record)
    return by_reference


def assert_exactly_once(hub: Hub, city: SimulatedCity, hub_ids: list[str]) -> dict[str, int]:
    """Every case: delivered once (the hub's external id is the department's only record
    for it) or dead-lettered with a reason and absent from the department."""
    records = department_records(city)
    tally = {"delivered": 0, "dead": 0}
    with hub.uow() as uow:
        for hub_id in hub_ids:
            order = uow.work_orders.get(hub_id, "publicworks")
            assert order is not None
            found = records.get(hub_id, [])
            assert len(found) <= 1, f"duplicate work orders for {hub_id}: {found}"
            if order.delivery_state.value == "delivered":
                assert len(found) == 1, f"{hub_id} delivered but the department has no record"
                assert order.external_id == str(found[0]["RequestId"])
                tally["delivered"] += 1
            else:
                assert order.delivery_state.value == "dead", f"{hub_id} is {order.delivery_state}"
                [item] = [i for i in uow.outbox.for_case(hub_id) if i.operation == "create"]
                assert item.state == "dead" and item.last_error_message
                assert not found, f"{hub_id} dead-lettered but the department has it"
                tally["dead"] += 1
    unknown = set(records) - set(hub_ids)
    assert not unknown, f"department holds records the hub never sent: {unknown}"
    return tally
