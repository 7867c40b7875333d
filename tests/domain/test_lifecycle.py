"""The lifecycle rules, checked exhaustively against a table written out independently."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from hub.model import (
    ALLOWED_TRANSITIONS,
    HUB_ID_NAMESPACE,
    Case,
    CaseStatus,
    Closure,
    InvalidTransition,
    Requester,
    TransitionOutcome,
    check_transition,
    new_hub_id,
)

S = CaseStatus
# Read as: from -> the statuses it may move to. Everything else (except itself) is refused.
EXPECTED = {
    S.RECEIVED: "routed cancelled rejected",
    S.ROUTED: "in_queue onsite resolved closed cancelled rejected",
    S.IN_QUEUE: "onsite resolved closed cancelled rejected",
    S.ONSITE: "resolved closed cancelled",
    S.RESOLVED: "closed reopened",
    S.CLOSED: "reopened",
    S.CANCELLED: "reopened",
    S.REJECTED: "reopened routed",
    S.REOPENED: "routed in_queue onsite resolved closed cancelled rejected",
}


@pytest.mark.parametrize("current,target", list(itertools.product(S, S)))
def test_every_transition_pair(current: CaseStatus, target: CaseStatus) -> None:
    allowed = {S(name) for name in EXPECTED[current].split()}
    outcome = check_transition(current, target)
    if current == target:
        assert outcome is TransitionOutcome.NO_OP
    elif target in allowed:
        assert outcome is TransitionOutcome.APPLIED
    else:
        assert outcome is TransitionOutcome.REFUSED


def test_table_covers_every_status() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(S) == set(EXPECTED)


def test_closed_case_never_moves_back_without_reopen() -> None:
    for earlier in (S.RECEIVED, S.ROUTED, S.IN_QUEUE, S.ONSITE, S.RESOLVED):
        assert check_transition(S.CLOSED, earlier) is TransitionOutcome.REFUSED


def test_case_transition_applies_bumps_version_and_time() -> None:
    case = Case(service_code="POTHOLE")
    at = datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    assert case.transition(S.ROUTED, at=at) is TransitionOutcome.APPLIED
    assert (case.status, case.version, case.updated_datetime) == (S.ROUTED, 2, at)
    assert case.transition(S.ROUTED) is TransitionOutcome.NO_OP
    assert case.version == 2


def test_case_transition_refused_raises_and_changes_nothing() -> None:
    case = Case(service_code="POTHOLE", status=S.CLOSED)
    with pytest.raises(InvalidTransition, match="'closed' cannot move to 'onsite'"):
        case.transition(S.ONSITE)
    assert case.status is S.CLOSED and case.version == 1


def test_reopen_clears_closure() -> None:
    case = Case(service_code="POTHOLE", status=S.CLOSED, closure=Closure(code="repaired"))
    case.transition(S.REOPENED)
    assert case.closure is None and case.open311_status == "open"


@pytest.mark.parametrize(
    "status,expected",
    [
        (S.RECEIVED, "open"),
        (S.ONSITE, "open"),
        (S.REOPENED, "open"),
        (S.RESOLVED, "closed"),
        (S.CLOSED, "closed"),
        (S.CANCELLED, "closed"),
        (S.REJECTED, "closed"),
    ],
)
def test_open311_status_is_derived(status: CaseStatus, expected: str) -> None:
    assert status.open311 == expected


def test_hub_id_is_stable_for_a_source_request() -> None:
    assert new_hub_id("crm", "42") == new_hub_id("crm", "42")
    assert new_hub_id("crm", "42") != new_hub_id("crm", "43")
    assert new_hub_id("crm", "42") != new_hub_id("other", "42")
    assert new_hub_id() != new_hub_id()


def test_hub_ids_with_the_request_time_sort_by_it_and_stay_stable() -> None:
    start = datetime(2026, 3, 8, 6, 59, 59, 999000, tzinfo=UTC)
    times = [start + timedelta(milliseconds=n * 7919) for n in range(50)]
    ids = [new_hub_id("crm", f"SR-{50 - n}", at) for n, at in enumerate(times)]
    assert sorted(ids) == ids  # as text: the order of the indexes keyed by case
    assert ids[0] == new_hub_id("crm", "SR-50", start)  # same source and time: same id
    assert ids[0] != new_hub_id("crm", "SR-50", start + timedelta(milliseconds=1))
    assert ids[0] != new_hub_id("crm", "SR-49", start)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == int(start.timestamp() * 1000)
    # the low bits are the source's uuid5 bits: stable, and distinct per source
    named = uuid.uuid5(HUB_ID_NAMESPACE, "crm\x1fSR-50")
    assert parsed.int & (1 << 62) - 1 == named.int & (1 << 62) - 1
    unsourced = [new_hub_id(requested_at=at) for at in times]
    assert sorted(unsourced) == unsourced and len(set(unsourced)) == 50


def test_requester_is_kept_out_of_repr_and_redacted_dump() -> None:
    case = Case(
        service_code="GRAFFITI",
        requester=Requester(first_name="Ada", email="ada@example.org", phone="555-0100"),
    )
    for text in (repr(case), str(case), str(case.requester), str(case.redacted())):
        assert "Ada" not in text and "ada@example.org" not in text and "555-0100" not in text
    assert case.requester is not None and case.requester.email == "ada@example.org"


def test_datetimes_are_stored_in_utc() -> None:
    eastern = timezone(timedelta(hours=-5))
    case = Case(service_code="X", requested_datetime=datetime(2026, 1, 5, 9, 0, tzinfo=eastern))
    assert case.requested_datetime == datetime(2026, 1, 5, 14, 0, tzinfo=UTC)
    naive = Case(service_code="X", requested_datetime=datetime(2026, 1, 5, 9, 0))
    assert naive.requested_datetime.tzinfo is UTC


def test_bad_coordinates_are_rejected() -> None:
    with pytest.raises(ValueError):
        Case(service_code="X", lat=123.0, long=0.0)
