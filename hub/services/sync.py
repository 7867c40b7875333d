"""Status in: department changes become canonical case status (poll, push and file paths).

Every path ends in :meth:`StatusSync.apply`, which for each event, in department sequence
order and inside one transaction (a page's reads and inserts are made set-wise, see
:class:`_Page`):

1. takes it once: an id already in ``inbound_events`` (unique department + external event
   id), or met earlier in the page, is a duplicate (a replayed webhook, an overlapping
   poll) and a no-op;
2. finds the work order by the department's id, else by the hub reference it carries; a
   record the hub does not link is an orphan (recorded, left for reconciliation);
3. drops events older than the last one applied to that work order (out of order) and,
   at an equal sequence (a department clock in whole seconds) or one inside a repeated
   fall-back hour (naive wall time, see :func:`compare`), those the lifecycle puts
   before it: a crew's Dispatch never undoes its Closed of the same second;
4. maps the raw code through the department's total mapping: an unknown code is an
   alert on the case timeline and an ``unmapped`` row, never a default;
5. keeps the raw code and text on the work order and moves the case through
   :func:`hub.services.status.change_status` (lifecycle-checked: a closed case only moves
   again when the department's code maps to ``reopened``), with the closure reason and
   the crew's evidence;
6. records each event taken with its outcome: one ``inbound_events`` row, inserted once
   (no later UPDATE) before the page's case and work-order writes; an id a concurrent
   sync recorded meanwhile makes the page roll back and run again without it.

A page may also carry ``rejected`` inputs (a file the adapter quarantined, a record it
could not read): they are classified by the adapter, counted
(``hub_status_inputs_rejected_total``), logged one WARNING each, stored in
``rejected_inputs`` (once per department, kind, source and digest; never the content)
and applied never; they do not stop the page's good events.

Polling keeps a per-department watermark and re-reads an overlap before it, widened by
the department zone's DST shift when the window crosses one (naive wall time repeats an
hour at fall-back, so a local-time query could otherwise skip it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.exc import DBAPIError

from hub.adapters import Capability, DepartmentEvent, RejectedInput
from hub.mapping import DepartmentMapping, StatusMapping, UnmappedStatus
from hub.mapping.engine import wall_readings
from hub.model import (
    Attachment,
    Case,
    CaseEvent,
    CaseStatus,
    Closure,
    DeliveryState,
    EventLevel,
    StatusEvent,
    TransitionOutcome,
    WorkOrder,
    check_transition,
    utcnow,
)
from hub.observability.logging import redact_text
from hub.observability.metrics import record_rejected_inputs, record_status_events
from hub.services.runtime import Hub
from hub.services.status import change_status
from hub.store.repository import StaleCase
from hub.store.uow import UnitOfWork

log = logging.getLogger(__name__)

POLL, PUSH, FILE, RECONCILE = "poll", "push", "file", "reconcile"
# inbound_events.outcome values (duplicates never get a row of their own).
APPLIED, NO_OP, REFUSED = "applied", "no_op", "refused"
UNMAPPED, IGNORED, ORPHAN, STALE, DUPLICATE = "unmapped", "ignored", "orphan", "stale", "duplicate"
AMBIGUOUS_TIME = "status_time_ambiguous"  # timeline kind: ordered in a repeated hour
TIME_SEQUENCE = "%Y-%m-%dT%H:%M:%S.%fZ"  # sequence_of's form of a UTC time
APPLY_ATTEMPTS = 3  # a concurrent writer (webhook vs poll) makes us re-read and retry
LOCK_CONFLICTS = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


# Enough for a large backlog in one run; the next scheduled poll carries on from there.
MAX_PAGES_PER_POLL = 50
COMMITTED_IDS_KEPT = 50_000  # per department: a contractor's repeated window, with room


class NotPollable(RuntimeError):
    """The department's adapter does not declare status_poll."""


@dataclass
class SyncResult:
    department: str
    source: str
    received: int = 0
    outcomes: Counter = field(default_factory=Counter)
    since: datetime | None = None
    watermark: datetime | None = None
    rejected: int = 0  # inputs the adapter refused (quarantined files, bad records)
    pages: int = 0  # a poll's pages, the seconds it spent reading and applying them
    read_seconds: float = 0.0
    apply_seconds: float = 0.0

    def merge(self, later: SyncResult) -> SyncResult:
        """This result followed by the next page's: counts add up, the watermark moves on."""
        self.received += later.received
        self.outcomes.update(later.outcomes)
        self.rejected += later.rejected
        self.pages += later.pages
        self.read_seconds += later.read_seconds
        self.apply_seconds += later.apply_seconds
        self.watermark = later.watermark or self.watermark
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "department": self.department,
            "source": self.source,
            "received": self.received,
            **{k: self.outcomes.get(k, 0) for k in (APPLIED, NO_OP, REFUSED, UNMAPPED)},
            **{k: self.outcomes.get(k, 0) for k in (IGNORED, ORPHAN, STALE, DUPLICATE)},
            "since": self.since.isoformat() if self.since else None,
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "rejected": self.rejected,
            "pages": self.pages,
            "read_seconds": round(self.read_seconds, 3),
            "apply_seconds": round(self.apply_seconds, 3),
        }


def sequence_of(event: StatusEvent) -> str:
    """The event's place in department order: its own sequence, else its UTC time."""
    return event.sequence or event.occurred_at.astimezone(UTC).strftime(TIME_SEQUENCE)


# Fall-back (DST end) repeats an hour of wall time: a department that stamps naive local
# time (Cityworks) says 01:40 for 05:40Z and for 06:40Z, and adapters read the first.
# A sequence that is only such a time cannot order two events of that hour, so:
#
# - a time-derived sequence stands for every instant its wall time can mean (both
#   readings), except readings after the hub's clock: before the hour has repeated, or
#   for a reading still in the future, there is nothing to doubt;
# - an event whose readings all come before the work order's last sequence's is stale,
#   all after is newer, as ever; overlapping readings are undecided, and decided like an
#   equal timestamp: by the lifecycle (the department's own order of a crew's steps), so
#   a closure stamped 01:40 EST after a 01:50 EDT dispatch is applied, a late copy of
#   the dispatch never undoes it, and nothing is dropped for the ambiguity alone;
# - such a decision is noted on the case timeline (``status_time_ambiguous``).
#
# A department that sends a sequence of its own (a modification counter) is ordered by
# it and never doubted; outside a repeated hour the readings are one instant and this
# is the plain comparison.


class Order(Enum):
    OLDER = "older"
    NEWER = "newer"
    TIE = "tie"  # the same sequence: a clock in whole seconds
    UNDECIDED = "undecided"  # readings overlap inside a repeated hour


def readings(sequence: str, zone: ZoneInfo, now: datetime) -> tuple[str, str]:
    """The earliest and latest sequence a time-derived `sequence` can stand for (itself
    twice when it is a department counter or an unambiguous time)."""
    if len(sequence) != 27 or not sequence.endswith("Z"):  # not TIME_SEQUENCE's form
        return sequence, sequence
    if not _hour_may_repeat(sequence[:13], zone):  # nearly always: one reading
        return sequence, sequence
    try:
        instant = datetime.fromisoformat(sequence[:-1]).replace(tzinfo=UTC)
    except ValueError:
        return sequence, sequence
    possible = [r for r in wall_readings(instant, zone) if r <= now] or [instant]
    first, last = min(possible[0], instant), max(possible[-1], instant)
    return first.strftime(TIME_SEQUENCE), last.strftime(TIME_SEQUENCE)


@lru_cache(maxsize=1024)
def _hour_may_repeat(hour: str, zone: ZoneInfo) -> bool:
    """Whether any wall time of the UTC `hour` ("2026-11-01T05") may repeat: an end of
    it in a repeated span, or an offset change within it. Cached, as status sync asks
    for every event and the answer is nearly always no."""
    try:
        start = datetime.fromisoformat(hour).replace(tzinfo=UTC)
    except ValueError:
        return False
    end = start + timedelta(hours=1) - timedelta(microseconds=1)
    if start.astimezone(zone).utcoffset() != end.astimezone(zone).utcoffset():
        return True
    return any(len(set(wall_readings(edge, zone))) > 1 for edge in (start, end))


def compare(sequence: str, last: str | None, zone: ZoneInfo, now: datetime) -> Order:
    """Where an event of `sequence` stands against the work order's `last` sequence."""
    if not last:
        return Order.NEWER
    if sequence == last:
        return Order.TIE
    low, high = readings(sequence, zone, now)
    last_low, last_high = readings(last, zone, now)
    if high < last_low:
        return Order.OLDER
    if low > last_high:
        return Order.NEWER
    return Order.UNDECIDED


def tie_follows(meaning: StatusMapping | None) -> frozenset[str]:
    """The mapped statuses an event may replace at an equal sequence. A department clock
    in whole seconds stamps a crew's Dispatch and Closed alike; which came last is then
    the lifecycle's call (never backwards), not the order the hub happened to see them."""
    if meaning is None:  # an ignored code tells nothing about progress: it never wins a tie
        return frozenset()
    return frozenset(
        s.value
        for s in CaseStatus
        if check_transition(s, meaning.status) is not TransitionOutcome.REFUSED
    )


def wins_tie(order: WorkOrder, raw_code: str, follows: frozenset[str]) -> bool:
    """Whether an event at the work order's own last sequence replaces its raw status
    (the same test as the guarded UPDATE makes)."""
    return (
        order.raw_status == raw_code
        or order.mapped_status is None
        or str(order.mapped_status) in follows
    )


def poll_since(watermark: datetime, *, overlap: float, zone: ZoneInfo, now: datetime) -> datetime:
    """Where the next poll starts: the overlap before the watermark, widened by the zone's
    UTC-offset change up to now (fall-back repeats an hour of naive wall time)."""
    since = watermark - timedelta(seconds=overlap)
    shift = abs(
        (now.astimezone(zone).utcoffset() or timedelta())
        - (since.astimezone(zone).utcoffset() or timedelta())
    )
    since -= shift
    first, second = wall_readings(since, zone)
    if since == second != first:
        # Inside the second occurrence of a repeated hour (a page end in UTC, an aware
        # department time): a naive local query from here would skip that hour's earlier
        # minutes, stamped before it. Start before the whole repeated hour instead.
        since = first - (second - first)
    return since


class StatusSync:
    def __init__(
        self, hub: Hub, *, clock: Callable[[], datetime] = utcnow, actor: str = "status-sync"
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.actor = actor
        self.committed = CommittedIds()

    # ----------------------------------------------------------------------- polling

    def pollable(self) -> list[str]:
        return [
            d
            for d in self.hub.configured_departments()
            if self.hub.adapter(d).supports(Capability.STATUS_POLL)
        ]

    async def poll_all(self) -> dict[str, SyncResult]:
        return {d: await self.poll(d) for d in self.pollable()}

    async def poll(self, department: str) -> SyncResult:
        """Read the department's changes since the watermark and apply them."""
        adapter = self.hub.adapter(department)
        if not adapter.supports(Capability.STATUS_POLL):
            raise NotPollable(f"{department} cannot be polled (no status_poll capability)")
        now = self.clock()
        watermark = await asyncio.to_thread(self._watermark, department, now)
        since = poll_since(
            watermark,
            overlap=self._config(department).poll_overlap_seconds,
            zone=self._zone(department),
            now=now,
        )
        result: SyncResult | None = None
        first_since = since
        for _ in range(MAX_PAGES_PER_POLL):
            started = time.perf_counter()
            page = await adapter.poll_changes(since)
            read = time.perf_counter() - started
            # Before applying: the adapter has already set these aside (quarantined), so
            # they are facts even if applying the page's events fails below.
            rejected = await self.record_rejected(department, page.rejected)
            # A department clock running ahead must not push the watermark past our now.
            page_end = min(page.next_watermark or since, now)
            reached = max(watermark, page_end)
            started = time.perf_counter()
            applied = await asyncio.to_thread(
                self.apply, department, page.events, source=POLL, watermark=reached
            )
            applied.pages, applied.read_seconds = 1, read
            applied.apply_seconds = time.perf_counter() - started
            applied.rejected = rejected
            result = applied if result is None else result.merge(applied)
            # Further pages resume where this one ended, inside the overlap too: more than
            # a page of changes within the overlap must not stop every poll at its first
            # page. A page that did not move at all would only repeat itself.
            if not page.more or page_end <= since:
                break
            since, watermark = page_end, reached
        assert result is not None
        result.since = first_since
        return result

    async def record_rejected(self, department: str, inputs: list[RejectedInput]) -> int:
        """Log, count and store what the adapter refused; nothing of it is applied.

        Stored in a unit of work of its own, not the page's: the adapter has set these
        inputs aside already (a quarantined file is moved), so they are facts whether or
        not the page's events apply. Reconciliation, which reads the same pages, records
        them here too."""
        if not inputs:
            return 0
        for item in inputs:
            log.warning(
                "%s: department input rejected (%s): %s: %s",
                department,
                item.kind,
                item.source,
                item.reason,
                extra={
                    "department": department,
                    "source": item.source,
                    "kind": item.kind,
                    "reason": item.reason,
                    "digest": item.digest,
                },
            )
        record_rejected_inputs(department, Counter(item.kind for item in inputs))
        await asyncio.to_thread(self._store_rejected, department, inputs)
        return len(inputs)

    def _store_rejected(self, department: str, inputs: list[RejectedInput]) -> int:
        """Insert-ignore each input; returns how many were new. The name and reason are
        redacted as the logs redact them: an adapter's reason may quote what it read."""
        cleaned = [
            item.model_copy(
                update={"source": redact_text(item.source), "reason": redact_text(item.reason)}
            )
            for item in inputs
        ]
        with self.hub.uow() as uow:
            stored = uow.rejected.record(department, cleaned, self.clock())
            uow.commit()
        return stored

    def _watermark(self, department: str, now: datetime) -> datetime:
        """Stored watermark; the first poll starts at the department's oldest work order.
        A read (on SQLite it does not queue behind the writers): only this department's
        poll, which the scheduler runs once at a time, moves the watermark."""
        with self.hub.read_uow() as uow:
            stored = uow.cursors.get(department)
            if stored is not None:
                return stored
            oldest = uow.work_orders.oldest_created_at(department)
        return oldest or now

    def _config(self, department: str):
        from hub.config import DepartmentConfig

        return self.hub.config.departments.get(department) or DepartmentConfig(adapter="")

    def _zone(self, department: str) -> ZoneInfo:
        try:
            return self.hub.mapping(department).local_timezone
        except KeyError:
            return ZoneInfo("UTC")

    # ----------------------------------------------------------------------- applying

    async def apply_async(
        self, department: str, events: list[DepartmentEvent], *, source: str
    ) -> SyncResult:
        return await asyncio.to_thread(self.apply, department, events, source=source)

    def apply(
        self,
        department: str,
        events: Iterable[StatusEvent],
        *,
        source: str,
        watermark: datetime | None = None,
    ) -> SyncResult:
        """Apply events in department order, in one transaction; notify after commit."""
        # Stable: events of one sequence (a clock in whole seconds) keep the department's
        # own order, which is better evidence than their ids' alphabetical one.
        ordered = sorted(events, key=sequence_of)
        fresh, known = self._read_ahead(department, ordered)
        mapping = self.hub.mapping(department)
        attempt = 1  # counts the reruns a concurrent writer forced (StaleCase, lock conflict)
        while True:
            result = SyncResult(department, source, received=len(ordered), watermark=watermark)
            result.outcomes[DUPLICATE] += len(ordered) - len(fresh)
            notes: list[tuple[Case, CaseStatus, CaseStatus, StatusEvent]] = []
            try:
                with self.hub.uow() as uow:
                    with uow.page_held():  # written at the end of the page, before commit
                        # A retry reads every case anew: the first attempt changed its copies.
                        ahead = known if attempt == 1 else None
                        page = _Page.load(uow, department, fresh, source, self.clock(), ahead)
                        for event in fresh:
                            outcome = self._apply_one(uow, page, mapping, event, source, notes)
                            result.outcomes[outcome] += 1
                        page.record(uow)
                    if watermark is not None:
                        uow.cursors.set(department, watermark)
                    uow.commit()
                self.committed.add(department, (e.external_event_id for e in ordered))
                break
            except RecordedMeanwhile as clash:
                # Not an attempt: each rerun has fewer events to clash on.
                fresh = [e for e in fresh if e.external_event_id not in clash.external_event_ids]
                log.info(
                    "status sync of %s: %d events recorded meanwhile; rerunning the page",
                    department,
                    len(clash.external_event_ids),
                )
                continue
            except StaleCase:
                if attempt == APPLY_ATTEMPTS:
                    raise
                log.info("case changed under status sync of %s; retrying", department)
            except DBAPIError as error:
                # A poll and a webhook (or a delivery) lock the same cases in another
                # order: the database rolled this one back whole, so it is safe to redo.
                if attempt == APPLY_ATTEMPTS or not _lock_conflict(error):
                    raise
                log.info("status sync of %s lost a lock conflict; retrying", department)
            attempt += 1
        self._notify(notes)
        record_status_events(department, source, result.outcomes)
        if result.outcomes[UNMAPPED] or result.outcomes[ORPHAN]:
            log.warning("status sync %s: %s", department, result.as_dict())
        return result

    def _read_ahead(
        self, department: str, events: list[StatusEvent]
    ) -> tuple[list[StatusEvent], dict[str, Case]]:
        """Before the write transaction, where other writers wait (SQLite has one write
        lock): the events whose ids are not recorded yet, and the cases they name.

        Overlapping polls and a contractor's overlapping files repeat most of what they
        carry; a recorded id can only ever be a duplicate (its row and outcome were
        committed together), so its repeats are counted here instead of being written,
        probed and refused inside the transaction. An id recorded between this read and
        the transaction is still refused there. The cases are read here, bodies and all;
        the transaction re-reads only those whose version moved on meanwhile. The ids this
        sync committed itself need no query at all (`CommittedIds`)."""
        unseen = [e for e in events if not self.committed.has(department, e.external_event_id)]
        if not unseen:
            return unseen, {}
        with self.hub.read_uow() as uow:
            recorded = uow.inbound.recorded(department, (e.external_event_id for e in unseen))
            fresh = [e for e in unseen if e.external_event_id not in recorded]
            named = sorted({e.external_id for e in fresh if e.external_id})
            orders = uow.work_orders.by_external_ids(department, named)
            cases = uow.cases.get_many(sorted({o.case_id for o in orders.values()}))
        return fresh, cases

    def _apply_one(
        self,
        uow: UnitOfWork,
        page: _Page,
        mapping: DepartmentMapping,
        event: StatusEvent,
        source: str,
        notes: list,
    ) -> str:
        if not page.take(event):
            return DUPLICATE
        order = page.work_order(uow, event)
        if order is None:
            return page.settle(event, ORPHAN)
        sequence = sequence_of(event)
        zone = mapping.local_timezone
        standing = compare(sequence, order.last_sequence, zone, self.clock())
        if standing is Order.OLDER:
            return page.settle(event, STALE, order.case_id)
        try:
            meaning = mapping.map_status_in(event.raw_code)
        except UnmappedStatus:
            uow.timeline.append(self._unmapped_event(order, event, source))
            return page.settle(event, UNMAPPED, order.case_id)
        follows = tie_follows(meaning)
        wins = standing is Order.NEWER or wins_tie(order, event.raw_code, follows)
        if standing is Order.UNDECIDED:
            uow.timeline.append(self._ambiguous_event(order, event, source, zone, wins))
            # Never below the recorded sequence: at most equal to it, where the guarded
            # UPDATE makes the same lifecycle test (a concurrent sync cannot undo it).
            sequence = max(sequence, order.last_sequence or "")
        if not wins:
            return page.settle(event, STALE, order.case_id)
        outcome = IGNORED
        if meaning is not None:
            outcome = self._move_case(
                uow, page.case(uow, order.case_id), event, meaning, source, notes
            )
        link = self._link(order, event)
        mapped = meaning.status if meaning else order.mapped_status
        uow.work_orders.apply_department_status(
            order.case_id,
            order.department,
            sequence=sequence,
            follows=follows,
            raw_status=event.raw_code,
            raw_status_text=event.raw_text,
            mapped_status=mapped.value if mapped else None,
            **link,
        )
        page.wrote(
            order.model_copy(
                update={
                    "last_sequence": sequence,
                    "raw_status": event.raw_code,
                    "raw_status_text": event.raw_text,
                    "mapped_status": mapped,
                    **link,
                }
            )
        )
        return page.settle(event, outcome, order.case_id)

    @staticmethod
    def _link(order: WorkOrder, event: StatusEvent) -> dict[str, Any]:
        """A record found by reference before the create was acknowledged: adopt it."""
        if order.external_id or not event.external_id:
            return {}
        return {"external_id": event.external_id, "delivery_state": DeliveryState.DELIVERED}

    def _move_case(self, uow, case: Case | None, event, meaning, source, notes) -> str:
        if case is None:
            return ORPHAN
        version = case.version
        added = _add_evidence(case, event.evidence)
        closure = None
        if meaning.status.is_final:
            code = meaning.closure_reason or event.closure_code
            closure = Closure(code=code, text=event.closure_text) if code else None
        change = change_status(
            uow,
            case,
            meaning.status,
            source=source,
            actor=self.actor,
            department=event.department,
            at=event.occurred_at,
            raw_code=event.raw_code,
            description=event.closure_text or event.raw_text,
            media_url=event.evidence[0].url if event.evidence else None,
            closure=closure,
            event=event,
        )
        if change.outcome is TransitionOutcome.APPLIED:
            notes.append((case, change.old, change.new, event))
        elif added:  # late photos on an unchanged status still reach the case
            case.version += 1
            uow.cases.save(case, expected_version=version)
        return change.outcome.value

    def _unmapped_event(self, order: WorkOrder, event: StatusEvent, source: str) -> CaseEvent:
        return CaseEvent(
            case_id=order.case_id,
            kind="status_unmapped",
            level=EventLevel.ALERT,
            actor=self.actor,
            source=source,
            department=event.department,
            message=f"department code {event.raw_code!r} is not in the {event.department}"
            " mapping: not applied (add it to the mapping, then reconcile)",
            detail={
                "raw_code": event.raw_code,
                "raw_text": event.raw_text,
                "external_event_id": event.external_event_id,
                "external_id": event.external_id,
            },
        )

    def _ambiguous_event(
        self, order: WorkOrder, event: StatusEvent, source: str, zone: ZoneInfo, applied: bool
    ) -> CaseEvent:
        first, second = wall_readings(event.occurred_at, zone)
        local = event.occurred_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        verdict = "applied" if applied else "not applied (an earlier step)"
        return CaseEvent(
            case_id=order.case_id,
            kind=AMBIGUOUS_TIME,
            actor=self.actor,
            source=source,
            department=event.department,
            message=f"department time {local} ({zone.key}) is in the hour the clocks went"
            f" back: {event.raw_code!r} ordered by the lifecycle, {verdict}",
            detail={
                "raw_code": event.raw_code,
                "external_event_id": event.external_event_id,
                "local_time": local,
                "timezone": zone.key,
                "readings": [first.isoformat(), second.isoformat()],
                "last_sequence": order.last_sequence,
                "applied": applied,
            },
        )

    def _notify(self, notes: list[tuple[Case, CaseStatus, CaseStatus, StatusEvent]]) -> None:
        for case, old, new, event in notes:
            try:
                self.hub.pm.hook.hub_on_status_change(
                    hub=self.hub, case=case, old=old, new=new, event=event
                )
            except Exception:  # a broken listener must not undo a committed status
                log.exception("on_status_change hook failed for case %s", case.hub_id)


# --------------------------------------------------------------------------- a page


class CommittedIds:
    """The external event ids this process's syncs committed, per department, the most
    recently seen ``COMMITTED_IDS_KEPT`` of each: a department that repeats what it sent
    (a contractor's file holds the last 90 minutes; every poll re-reads its overlap)
    would otherwise have every repeat looked up in the database, page after page.

    Only ever a subset of what is recorded (an id enters after its page committed, and a
    recorded event stays recorded), so an id found here is a duplicate for certain; one
    not found is looked up as before."""

    def __init__(self, kept: int | None = None) -> None:
        self.kept = kept
        self._ids: dict[str, OrderedDict[str, None]] = {}

    def has(self, department: str, external_event_id: str) -> bool:
        ids = self._ids.get(department)
        if ids is None or external_event_id not in ids:
            return False
        ids.move_to_end(external_event_id)  # a repeat keeps its id in memory
        return True

    def add(self, department: str, external_event_ids: Iterable[str]) -> None:
        ids = self._ids.setdefault(department, OrderedDict())
        for external_event_id in external_event_ids:
            ids[external_event_id] = None
            ids.move_to_end(external_event_id)
        kept = COMMITTED_IDS_KEPT if self.kept is None else self.kept
        while len(ids) > kept:
            ids.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())


class RecordedMeanwhile(Exception):
    """Events of the page a concurrent sync recorded after the page's read-ahead."""

    def __init__(self, external_event_ids: set[str]) -> None:
        super().__init__(f"{len(external_event_ids)} events recorded meanwhile")
        self.external_event_ids = external_event_ids


class _Page:
    """One page of one department's events inside apply's transaction, read and written
    set-wise: the work orders and cases the events name read in one query each, and the
    events' inbound rows, each with its outcome, inserted in one statement at the end.
    One write per row, never an insert and then an UPDATE of its outcome: on PostgreSQL
    the UPDATE was a second row version and a second entry in each of the table's
    indexes. The cases and work orders it changes are written at the end too (the unit of
    work holds them): a work order an event wrote stays in the page as written, and a
    case it moved is served from the held saves, so a later event of the page sees both
    as they now are."""

    def __init__(
        self,
        events: list[StatusEvent],
        orders: dict[str, WorkOrder],
        cases: dict[str, Case],
        source: str,
        now: datetime,
    ):
        self.fresh = {e.external_event_id for e in events}  # not recorded, not taken yet
        self.orders = orders  # by the department's id: as read, or as this page wrote them
        self.cases = cases  # as read at the page's start, each served once
        self.written: dict[tuple[str, str], WorkOrder] = {}  # (case, department): as written
        self.rows: list[dict[str, Any]] = []  # inbound rows, outcome included
        self.source = source
        self.now = now

    @classmethod
    def load(
        cls,
        uow: UnitOfWork,
        department: str,
        events: list[StatusEvent],
        source: str,
        now: datetime,
        known: dict[str, Case] | None = None,
    ) -> _Page:
        """`events`: those not recorded at the read-ahead. `known`: cases read before the
        transaction, used where still current."""
        named = {e.external_id for e in events if e.external_id}
        orders = uow.work_orders.by_external_ids(department, sorted(named))
        cases = _current_cases(uow, sorted({o.case_id for o in orders.values()}), known or {})
        return cls(events, orders, cases, source, now)

    def take(self, event: StatusEvent) -> bool:
        """True once for an event not recorded before; a later copy in the page is a
        duplicate."""
        if event.external_event_id not in self.fresh:
            return False
        self.fresh.discard(event.external_event_id)
        return True

    def settle(self, event: StatusEvent, outcome: str, case_id: str | None = None) -> str:
        row = _inbound_row(event, self.source, self.now)
        self.rows.append(row | {"outcome": outcome, "case_id": case_id})
        return outcome

    def record(self, uow: UnitOfWork) -> None:
        """Insert the page's inbound rows, before its held writes. An id another sync
        recorded since the read-ahead (a webhook beside a poll) makes the whole page void:
        its outcome may rest on a state that sync has changed."""
        inserted = uow.inbound.record_many(self.rows)
        clashed = {row["external_event_id"] for row in self.rows} - inserted
        if clashed:
            raise RecordedMeanwhile(clashed)

    def work_order(self, uow: UnitOfWork, event: StatusEvent) -> WorkOrder | None:
        """By the department's id; else by the hub reference, if the hub has not linked
        another record (a second record for one case is the department's duplicate)."""
        if event.external_id:
            order = self.orders.get(event.external_id)
            if order is not None:
                return order
        if event.hub_reference:
            order = self.written.get((event.hub_reference, event.department))
            if order is None:
                order = uow.work_orders.get(event.hub_reference, event.department)
            if order is not None and order.external_id in (None, event.external_id):
                return order
        return None

    def case(self, uow: UnitOfWork, case_id: str) -> Case | None:
        case = self.cases.pop(case_id, None)  # moved by the caller: never served twice
        return case if case is not None else uow.cases.get(case_id)

    def wrote(self, order: WorkOrder) -> None:
        """The work order as this page's event left it (its UPDATE is held)."""
        if order.external_id:
            self.orders[order.external_id] = order
        self.written[(order.case_id, order.department)] = order
        self.cases.pop(order.case_id, None)  # a later event reads the held copy


def _current_cases(uow: UnitOfWork, wanted: list[str], known: dict[str, Case]) -> dict[str, Case]:
    """The cases `wanted` as stored now: the `known` copies whose version is unchanged,
    the rest read again."""
    versions = uow.cases.versions([h for h in wanted if h in known])
    cases = {h: known[h] for h, v in versions.items() if known[h].version == v}
    cases.update(uow.cases.get_many([h for h in wanted if h not in cases]))
    return cases


def _inbound_row(event: StatusEvent, source: str, now: datetime) -> dict[str, Any]:
    return {
        "department": event.department,
        "external_event_id": event.external_event_id,
        "external_id": event.external_id,
        "raw_code": event.raw_code[:64],
        "raw_text": event.raw_text,
        "occurred_at": event.occurred_at,
        "sequence": sequence_of(event)[:64],
        "received_at": now,
        "payload": {"source": source, **event.model_dump(mode="json")},
    }


def _lock_conflict(error: DBAPIError) -> bool:
    """A deadlock or serialization failure (PostgreSQL), never a broken statement."""
    return getattr(error.orig, "sqlstate", None) in LOCK_CONFLICTS


def _add_evidence(case: Case, evidence: list[Attachment]) -> bool:
    known = {a.url for a in case.evidence}
    new = [a for a in evidence if a.url not in known]
    if new:
        case.evidence = [*case.evidence, *new]
    return bool(new)


def inbound_counts(hub: Hub, department: str | None = None) -> dict[str, int]:
    """inbound_events per outcome (the unmapped and orphan counters of the alerts)."""
    with hub.uow() as uow:
        return uow.inbound.counts(department)


__all__ = [
    "APPLIED",
    "DUPLICATE",
    "ORPHAN",
    "STALE",
    "UNMAPPED",
    "NotPollable",
    "StatusSync",
    "SyncResult",
    "compare",
    "inbound_counts",
    "poll_since",
    "readings",
    "sequence_of",
]
