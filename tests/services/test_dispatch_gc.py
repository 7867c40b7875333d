"""A dispatcher run keeps the process's long-lived objects out of the collector's sight
(gc.freeze) and hands the heap back as it found it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import hub.services.dispatch as dispatch
from hub.services.dispatch import Dispatcher, _frozen_heap
from hub.testing.harness import SimulatedCity
from tests.services.conftest import assert_exactly_once, feed

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()  # whatever an earlier test left: these start from an unfrozen heap
    try:
        yield
    finally:
        gc.unfreeze()


async def test_the_heap_is_frozen_while_delivering_and_unfrozen_after(
    city: SimulatedCity, unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    observe = dispatch.observe_attempt

    def record(attempt) -> None:
        seen.append(gc.get_freeze_count())
        observe(attempt)

    monkeypatch.setattr(dispatch, "observe_attempt", record)
    hub = city.hub()
    cases = feed(hub, 5)
    await Dispatcher(hub, worker_id="gc-worker").run(until_empty=True, timeout=60)
    assert len(seen) == 5 and all(count > 0 for count in seen)
    assert gc.get_freeze_count() == 0
    assert assert_exactly_once(hub, city, [c.hub_id for c in cases]) == {
        "delivered": 5,
        "dead": 0,
    }
    await hub.aclose()


def test_overlapping_runs_unfreeze_when_the_last_ends(unfrozen: None) -> None:
    first, second = _frozen_heap(), _frozen_heap()
    first.__enter__()
    assert gc.get_freeze_count() > 0
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_freeze_count() > 0  # the second run is still going
    second.__exit__(None, None, None)
    assert gc.get_freeze_count() == 0


def test_someone_elses_freeze_is_left_alone(unfrozen: None) -> None:
    gc.freeze()  # e.g. `hub serve` froze its start-up objects
    frozen = gc.get_freeze_count()
    with _frozen_heap():
        assert gc.get_freeze_count() >= frozen
    assert gc.get_freeze_count() >= frozen > 0


def test_an_error_in_the_run_still_unfreezes(unfrozen: None) -> None:
    with pytest.raises(RuntimeError), _frozen_heap():
        raise RuntimeError("adapter blew up")
    assert gc.get_freeze_count() == 0
