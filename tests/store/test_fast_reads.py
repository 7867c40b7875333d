"""The case reads parse the stored JSON text with pydantic in one step: the models must be
the ones json.loads + model_validate of the same row gives, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from hub.mapping import load_mappings
from hub.model import Attachment, Case, CaseStatus, Closure, Requester
from hub.store import tables as t
from hub.store.uow import UnitOfWork
from hub.testing.generator import CaseGenerator

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def validated(connection, hub_id: str) -> Case:
    """The reference: the row decoded by SQLAlchemy and validated field by field."""
    c = t.cases.c
    row = connection.execute(
        select(c.body, c.requester, c.status, c.version, c.updated_at).where(c.hub_id == hub_id)
    ).one()
    body = {
        **row.body,
        "status": row.status,
        "version": row.version,
        "updated_datetime": row.updated_at,
    }
    case = Case.model_validate(body)
    if row.requester:
        case.requester = Requester.model_validate(row.requester)
    return case


def assert_same(read: Case, reference: Case) -> None:
    assert read == reference
    assert read.requester == reference.requester  # excluded from ==: compared alone
    assert read.model_fields_set == reference.model_fields_set
    assert type(read.status) is CaseStatus and type(read.priority) is type(reference.priority)
    for name in ("requested_datetime", "updated_datetime", "sla_due"):
        mine, theirs = getattr(read, name), getattr(reference, name)
        assert mine == theirs and getattr(mine, "tzinfo", None) == getattr(theirs, "tzinfo", None)
    assert read.model_dump(mode="json") == reference.model_dump(mode="json")


def odd_cases() -> list[Case]:
    """Shapes the generator does not make: no requester, a closure, nested and unicode
    attributes, awkward floats, an SLA time, several pieces of evidence."""
    return [
        Case(service_code="POTHOLE", source_system="crm", source_id="odd-1"),
        Case(
            service_code="GRAFFITI",
            source_system="crm",
            source_id="odd-2",
            description="Tag on the wall — «très» visible 🎨",
            lat=-0.0,
            long=179.99999999999997,
            attributes={"nested": {"a": [1, 2.5, None, True]}, "big": 2**70, "f": 1e-300},
            requester=Requester(first_name="Zoë", phone="+1 617 555 0100"),
            closure=Closure(code="cleaned", text="Done"),
            sla_due=T0 + timedelta(hours=4, microseconds=7),
            requested_datetime=datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            evidence=[
                Attachment(url="https://x.invalid/1.jpg", content_type="image/jpeg", size=0),
                Attachment(url="file:///tmp/2.pdf", filename="2.pdf", digest="sha256:00"),
            ],
            status=CaseStatus.ROUTED,
            version=3,
        ),
        Case(
            service_code="POTHOLE",
            source_system="crm",
            source_id="odd-3",
            requester=Requester(),  # all fields empty: still a requester
        ),
    ]


def test_reads_equal_the_validated_models(engine) -> None:
    mappings = load_mappings()
    cases = list(CaseGenerator(mappings, seed=42).generate(150)) + odd_cases()
    with UnitOfWork(engine) as uow:
        added = uow.cases.add_many([(case, f"tok-{i}") for i, case in enumerate(cases)])
        assert len(added) == len(cases)
        uow.commit()
    ids = [case.hub_id for case in cases]
    with UnitOfWork(engine) as uow:
        many = uow.cases.get_many(ids + ids[:3])  # repeats are harmless
        assert set(many) == set(ids)
        for i, case in enumerate(cases):
            reference = validated(uow.connection, case.hub_id)
            assert reference == case  # the reference itself round-trips
            assert_same(many[case.hub_id], reference)
            assert_same(uow.cases.get(case.hub_id), reference)
            assert_same(uow.cases.get_by_token(f"tok-{i}"), reference)
            if case.source_system and case.source_id:
                by_source = uow.cases.get_by_source(case.source_system, case.source_id)
                assert_same(by_source, reference)


def test_status_version_and_update_time_come_from_the_columns(engine) -> None:
    case = odd_cases()[1]
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        moved = uow.cases.advance_status_many(
            {case.hub_id: case.version}, status=CaseStatus.IN_QUEUE.value, at=T0
        )
        assert moved == {case.hub_id}
        uow.commit()
    with UnitOfWork(engine) as uow:
        [read] = uow.cases.get_many([case.hub_id]).values()
        assert_same(read, validated(uow.connection, case.hub_id))
        assert (read.status, read.version, read.updated_datetime) == (
            CaseStatus.IN_QUEUE,
            case.version + 1,
            T0,
        )
        assert read.updated_datetime.tzinfo is UTC
        # Still a validating model: assignments are checked as before.
        read.status = "onsite"
        assert read.status is CaseStatus.ONSITE


def test_no_requester_reads_as_none(engine) -> None:
    case = odd_cases()[0]
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        uow.commit()
    with UnitOfWork(engine) as uow:
        read = uow.cases.get(case.hub_id)
        assert read is not None and read.requester is None
        assert "requester" not in read.model_fields_set
        assert uow.cases.get_many([]) == {}
        assert uow.cases.get_many(["no-such-case"]) == {}


def test_a_minimal_body_reads_like_the_validated_one(engine) -> None:
    """A body without the column fields (and most others): defaults are filled in and the
    column fields count as set, as with the validated read. (requested_datetime is given:
    its default is the time of reading.)"""
    row = {
        "hub_id": "minimal-1",
        "service_code": "POTHOLE",
        "status": CaseStatus.ROUTED.value,
        "version": 2,
        "requested_at": T0,
        "updated_at": T0,
        "body": {
            "hub_id": "minimal-1",
            "service_code": "POTHOLE",
            "requested_datetime": "2026-05-01T12:00:00Z",
        },
        "requester": None,
    }
    with UnitOfWork(engine) as uow:
        uow.connection.execute(t.cases.insert().values(**row))
        uow.commit()
    with UnitOfWork(engine) as uow:
        read = uow.cases.get_many(["minimal-1"])["minimal-1"]
        assert_same(read, validated(uow.connection, "minimal-1"))
        assert read.model_fields_set == {
            "hub_id",
            "service_code",
            "requested_datetime",
            "status",
            "version",
            "updated_datetime",
        }


def test_advance_status_many_moves_only_cases_still_at_their_expected_version(engine) -> None:
    fresh, stale = odd_cases()[:2]
    with UnitOfWork(engine) as uow:
        uow.cases.add(fresh)
        uow.cases.add(stale)
        expected = {fresh.hub_id: fresh.version, stale.hub_id: stale.version - 1}
        moved = uow.cases.advance_status_many(expected, status=CaseStatus.IN_QUEUE.value, at=T0)
        assert moved == {fresh.hub_id}  # the other was saved since it was read
        again = uow.cases.advance_status_many(expected, status=CaseStatus.ONSITE.value, at=T0)
        assert again == set()  # fresh moved on to version + 1 already
        uow.commit()
    with UnitOfWork(engine) as uow:
        cases = uow.cases.get_many([fresh.hub_id, stale.hub_id])
    assert (cases[fresh.hub_id].status, cases[fresh.hub_id].version) == (
        CaseStatus.IN_QUEUE,
        fresh.version + 1,
    )
    assert (cases[stale.hub_id].status, cases[stale.hub_id].version) == (
        stale.status,
        stale.version,
    )
