"""Reconciliation: compare the hub's work orders with each department's, report, heal.

Classes of drift:

- **missing**: the hub believes a work order was delivered; the department has no such
  record (and none carrying the hub reference either).
- **orphan**: the department holds a record carrying a hub reference the hub does not link
  (a create whose answer was lost, a duplicate, a record made by hand).
- **drift**: the department's current status differs from the last one the hub applied
  (a lost webhook, a missed poll, an unmapped code).
- **stuck**: undelivered past its deadline, an unknown outcome never resolved, a
  dead-lettered create, a lease that expired and was never reclaimed.

It streams: hub work orders are read in keyset batches (``id > last``) of ``batch_size``
and compared batch by batch with the department (``get_status`` per batch, or
``find_by_reference`` per record when that is all the adapter can do). Orphans need the
department's side: an adapter may offer ``list_records(cursor, limit) -> (events,
next_cursor)`` (every record, paged); otherwise the changes since the oldest work order
are read through ``poll_changes``. With a listing, the department side is read once and
only the external ids seen are kept (a set of short strings), never the work orders.

``--heal`` repairs through the normal paths, so a second run finds nothing: missing →
a fresh create through the outbox; orphan of a known case → linked by the status sync
(which also applies its status); drift → the department's event applied by the status
sync; stuck unknown outcomes → looked up by reference and linked when found. Dry run is
the default. Each run is stored in ``reconcile_runs`` (counts + a capped sample).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, desc, insert, null, select, update

from hub.adapters import (
    Adapter,
    Capability,
    CapabilityNotSupported,
    DeliveryError,
    DepartmentEvent,
    ExternalRef,
    Transient,
)
from hub.model import CaseEvent, DeliveryState, EventLevel, utcnow
from hub.services.runtime import Hub
from hub.services.sync import RECONCILE, StatusSync
from hub.store import tables as t
from hub.store.repository import OutboxState

log = logging.getLogger(__name__)

MISSING, ORPHAN, DRIFT, STUCK = "missing", "orphan", "drift", "stuck"
CLASSES = (MISSING, ORPHAN, DRIFT, STUCK)
SAMPLE_LIMIT = 200  # findings kept per class and department in the stored report
UNRESOLVED = ("unknown_outcome", "malformed")


@dataclass
class Finding:
    kind: str
    department: str
    case_id: str | None
    external_id: str | None
    detail: str
    hub_status: str | None = None
    department_status: str | None = None
    healed: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DepartmentReport:
    department: str
    compared: int = 0
    listed: int = 0
    counts: Counter = field(default_factory=Counter)
    healed: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    incomplete: bool = False

    def add(self, finding: Finding) -> Finding:
        self.counts[finding.kind] += 1
        if sum(1 for f in self.findings if f.kind == finding.kind) < SAMPLE_LIMIT:
            self.findings.append(finding)
        return finding

    def as_dict(self) -> dict[str, Any]:
        return {
            "department": self.department,
            "compared": self.compared,
            "listed": self.listed,
            "counts": {k: self.counts.get(k, 0) for k in CLASSES},
            "healed": {k: self.healed.get(k, 0) for k in CLASSES},
            "findings": [f.as_dict() for f in self.findings],
            "notes": self.notes,
            "incomplete": self.incomplete,
        }


@dataclass
class ReconcileReport:
    started_at: datetime
    heal: bool
    departments: dict[str, DepartmentReport] = field(default_factory=dict)
    finished_at: datetime | None = None
    run_id: int | None = None
    sections: dict[str, Any] = field(default_factory=dict)  # plugins' own (e.g. payments)

    @property
    def counts(self) -> dict[str, int]:
        total: Counter = Counter()
        for report in self.departments.values():
            total.update(report.counts)
        return {k: total.get(k, 0) for k in CLASSES}

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "heal": self.heal,
            "counts": self.counts,
            "clean": self.clean,
            "departments": {n: r.as_dict() for n, r in sorted(self.departments.items())},
            "sections": self.sections,
        }


@dataclass(frozen=True)
class HubRow:
    """The columns of a work order reconciliation needs (never the case body)."""

    id: int
    case_id: str
    external_id: str | None
    raw_status: str | None
    delivery_state: str
    created_at: datetime


class Reconciler:
    def __init__(
        self,
        hub: Hub,
        *,
        batch_size: int = 500,
        stuck_after: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.hub = hub
        self.batch_size = batch_size
        self.stuck_after = stuck_after
        self.clock = clock
        self.sync = StatusSync(hub, clock=clock, actor="reconcile")

    async def run(self, department: str | None = None, *, heal: bool = False) -> ReconcileReport:
        report = ReconcileReport(started_at=self.clock(), heal=heal)
        for name in [department] if department else self.hub.configured_departments():
            report.departments[name] = await self.department(name, heal=heal)
        if department is None:
            report.sections = await asyncio.to_thread(plugin_sections, self.hub, heal=heal)
        report.finished_at = self.clock()
        report.run_id = self._store(report, department)
        return report

    async def department(self, department: str, *, heal: bool = False) -> DepartmentReport:
        report = DepartmentReport(department)
        adapter = Patient(self.hub.adapter(department))
        try:
            await self._department(adapter, report, heal)
        except DeliveryError as error:  # a partial comparison is said to be one
            report.incomplete = True
            report.notes.append(f"incomplete: {department} could not be read ({error})")
            log.warning("reconcile %s incomplete: %s", department, error)
        return report

    async def _department(self, adapter: Adapter, report: DepartmentReport, heal: bool) -> None:
        department = report.department
        seen: set[str] | None = None
        if callable(getattr(adapter, "list_records", None)):
            seen = set()
            await self._department_side(adapter, report, heal, seen)
        async for batch in self._hub_batches(department):
            await self._compare(adapter, batch, report, heal, seen)
        if seen is None:
            await self._department_side(adapter, report, heal, None)
        self._expired_leases(report)

    # ----------------------------------------------------------------------- hub side

    async def _hub_batches(self, department: str) -> AsyncIterator[list[HubRow]]:
        last = 0
        while True:
            batch = await asyncio.to_thread(self._hub_batch, department, last)
            if not batch:
                return
            last = batch[-1].id
            yield batch

    def _hub_batch(self, department: str, after: int) -> list[HubRow]:
        w = t.work_orders
        query = (
            select(
                w.c.id,
                w.c.case_id,
                w.c.external_id,
                w.c.raw_status,
                w.c.delivery_state,
                w.c.created_at,
            )
            # `department || ''` keeps the planner on the primary key: filtering through
            # the (department, …) indexes sorts every row per batch, O(n²) over a run.
            .where((w.c.department + "") == department, w.c.id > after)
            .order_by(w.c.id)
            .limit(self.batch_size)
        )
        with self.hub.uow() as uow:
            return [HubRow(*row) for row in uow.connection.execute(query)]  # type: ignore[union-attr]

    async def _compare(
        self,
        adapter: Adapter,
        batch: list[HubRow],
        report: DepartmentReport,
        heal: bool,
        seen: set[str] | None,
    ) -> None:
        report.compared += len(batch)
        linked = [r for r in batch if r.external_id and r.delivery_state == DeliveryState.DELIVERED]
        if seen is not None:  # listing mode: drift was compared there; only check absences
            absent = [r for r in linked if r.external_id not in seen]
            current = (await self._statuses(adapter, absent, report) if absent else {}) or {}
            for row in absent:
                if row.external_id not in current:
                    await self._missing(adapter, row, report, heal, listing=True)
        else:
            current = await self._statuses(adapter, linked, report)
            if current is not None:
                for row in linked:
                    event = current.get(row.external_id or "")
                    if event is None:
                        await self._missing(adapter, row, report, heal)
                    elif event.raw_code and event.raw_code != row.raw_status:
                        # (an empty code: the department tells presence, not status)
                        await self._drift(row, event, report, heal)
        linked_ids = {r.id for r in linked}
        await self._stuck(adapter, [r for r in batch if r.id not in linked_ids], report, heal)

    async def _statuses(
        self, adapter: Adapter, rows: list[HubRow], report: DepartmentReport
    ) -> dict[str, DepartmentEvent] | None:
        if not rows:
            return {}
        if adapter.supports(Capability.STATUS_POLL) or _has(adapter, "get_status"):
            try:
                ids = [r.external_id or "" for r in rows]
                return {e.external_id or "": e for e in await self._get_status(adapter, ids)}
            except CapabilityNotSupported:
                pass
        if adapter.supports(Capability.FIND_BY_REFERENCE):
            found: dict[str, DepartmentEvent] = {}
            for row in rows:
                ref = await adapter.find_by_reference(row.case_id)
                if ref is not None and ref.external_id == row.external_id:
                    found[ref.external_id] = _event_of(adapter, ref, self.clock())
            return found
        if "status not compared" not in " ".join(report.notes):
            report.notes.append(f"{adapter.department} cannot be read back: status not compared")
        return None

    async def _get_status(self, adapter: Adapter, ids: list[str]) -> list[DepartmentEvent]:
        """Batch read; a batch that keeps failing is halved (one flaky call per record
        must not sink the whole batch), down to single records."""
        try:
            return await adapter.get_status(ids)
        except Transient:
            if len(ids) == 1:
                raise
            half = len(ids) // 2
            return [
                *await self._get_status(adapter, ids[:half]),
                *await self._get_status(adapter, ids[half:]),
            ]

    # ----------------------------------------------------------------------- classes

    async def _missing(
        self,
        adapter: Adapter,
        row: HubRow,
        report: DepartmentReport,
        heal: bool,
        *,
        listing: bool = False,
    ) -> None:
        # The record may be there under another id (renumbered, re-created by hand). A full
        # listing already showed every reference (as orphans): a dry run need not ask again.
        ref = await _lookup(adapter, row.case_id) if heal or not listing else None
        if ref is not None:
            finding = report.add(
                Finding(
                    ORPHAN,
                    adapter.department,
                    row.case_id,
                    ref.external_id,
                    f"hub links {row.external_id}, the department holds {ref.external_id}",
                    row.raw_status,
                    ref.raw_status,
                )
            )
            if heal:
                await self._relink(row, ref, adapter, finding, report)
            return
        finding = report.add(
            Finding(
                MISSING,
                adapter.department,
                row.case_id,
                row.external_id,
                "delivered, but the department has no such record",
                row.raw_status,
            )
        )
        if heal:
            self._redispatch(row, adapter.department, finding, report)

    async def _drift(
        self, row: HubRow, event: DepartmentEvent, report: DepartmentReport, heal: bool
    ) -> None:
        finding = report.add(
            Finding(
                DRIFT,
                event.department,
                row.case_id,
                row.external_id,
                f"hub last applied {row.raw_status!r}, department says {event.raw_code!r}",
                row.raw_status,
                event.raw_code,
            )
        )
        if heal:
            result = await self.sync.apply_async(event.department, [event], source=RECONCILE)
            finding.healed = ",".join(sorted(result.outcomes)) or "applied"
            if result.outcomes.get("unmapped") or result.outcomes.get("duplicate"):
                finding.healed = None  # the status sync could not apply it: a human must
            else:
                report.healed[DRIFT] += 1

    async def _stuck(
        self, adapter: Adapter, rows: list[HubRow], report: DepartmentReport, heal: bool
    ) -> None:
        if not rows:
            return
        creates = self._create_rows([r.case_id for r in rows], adapter.department)
        now = self.clock()
        for row in rows:
            item = creates.get(row.case_id)
            why = _why_stuck(row, item, now, self.stuck_after)
            if why is None:
                continue
            finding = report.add(
                Finding(
                    STUCK, adapter.department, row.case_id, row.external_id, why, row.raw_status
                )
            )
            if heal and ("unknown outcome" in why or row.delivery_state == DeliveryState.DEAD):
                ref = await _lookup(adapter, row.case_id)
                if ref is not None:
                    await self._relink(row, ref, adapter, finding, report, kind=STUCK)

    def _create_rows(self, case_ids: list[str], department: str) -> dict[str, Any]:
        o = t.outbox
        query = (
            select(o.c.case_id, o.c.state, o.c.last_error_class, o.c.created_at)
            .where(
                o.c.case_id.in_(case_ids), o.c.department == department, o.c.operation == "create"
            )
            .order_by(o.c.id)
        )
        with self.hub.uow() as uow:
            return {r.case_id: r for r in uow.connection.execute(query)}  # type: ignore[union-attr]

    def _expired_leases(self, report: DepartmentReport) -> None:
        o = t.outbox
        cutoff = self.clock() - timedelta(minutes=5)
        query = (
            select(o.c.case_id, o.c.operation, o.c.locked_until, o.c.locked_by)
            .where(
                o.c.department == report.department,
                o.c.state == OutboxState.PENDING,
                o.c.locked_until.is_not(None),
                o.c.locked_until < cutoff,
            )
            .limit(10_000)
        )
        with self.hub.uow() as uow:
            for row in uow.connection.execute(query):  # type: ignore[union-attr]
                report.add(
                    Finding(
                        STUCK,
                        report.department,
                        row.case_id,
                        None,
                        f"{row.operation}: lease of {row.locked_by} expired at "
                        f"{row.locked_until.isoformat()} and nobody reclaimed it",
                    )
                )

    # ----------------------------------------------------------------------- department side

    async def _department_side(
        self, adapter: Adapter, report: DepartmentReport, heal: bool, seen: set[str] | None
    ) -> None:
        pages = self._department_pages(adapter, report)
        # Read the next page while this one is compared: the department is the slow side.
        upcoming = asyncio.ensure_future(anext(pages, None))
        while (page := await upcoming) is not None:
            upcoming = asyncio.ensure_future(anext(pages, None))
            report.listed += len(page)
            if seen is not None:
                seen.update(e.external_id for e in page if e.external_id)
            await self._check_page(page, report, heal, listing=seen is not None)

    async def _department_pages(
        self, adapter: Adapter, report: DepartmentReport
    ) -> AsyncIterator[list[DepartmentEvent]]:
        lister = getattr(adapter, "list_records", None)
        if callable(lister):
            cursor: Any = None
            while True:
                events, cursor = await lister(cursor, self.batch_size)
                if events:
                    yield events
                if cursor is None:
                    return
        if not adapter.supports(Capability.STATUS_POLL):
            report.notes.append(f"{adapter.department} cannot be listed: orphans not searched")
            return
        since = self._oldest(adapter.department)
        if since is None:
            return
        since -= timedelta(days=1)
        while True:  # a department that pages its changes (more=True) is read to the end
            page = await adapter.poll_changes(since)
            # Reading a page may set inputs aside (a file drop's triage quarantines bad
            # files): recorded as a poll records them, or nobody would ever hear of them.
            await self.sync.record_rejected(adapter.department, page.rejected)
            for start in range(0, len(page.events), self.batch_size):
                yield page.events[start : start + self.batch_size]
            resume = min(page.next_watermark or since, self.clock())
            if not page.more or resume <= since:
                return
            since = resume

    def _oldest(self, department: str) -> datetime | None:
        with self.hub.uow() as uow:
            return uow.work_orders.first_created_at(department)

    async def _check_page(
        self, page: list[DepartmentEvent], report: DepartmentReport, heal: bool, *, listing: bool
    ) -> None:
        by_ext, by_case, known_cases = await asyncio.to_thread(
            self._page_rows, report.department, page
        )
        for event in page:
            row = by_ext.get(event.external_id)
            if row is not None:
                if listing and event.raw_code and event.raw_code != row.raw_status:
                    await self._drift(HubRow(*row), event, report, heal)
                continue
            if not event.hub_reference:
                continue  # not a record the hub made: none of our business
            await self._orphan(
                event,
                by_case.get(event.hub_reference),
                event.hub_reference in known_cases,
                report,
                heal,
            )

    def _page_rows(self, department: str, page: list[DepartmentEvent]):
        """The hub's work orders for a page of department records (by id, then by ref)."""
        ids = [e.external_id for e in page if e.external_id]
        w = t.work_orders
        # created_at is not needed here; skipping it skips a datetime parse per row.
        columns = (
            w.c.id,
            w.c.case_id,
            w.c.external_id,
            w.c.raw_status,
            w.c.delivery_state,
            null(),
        )
        by_case: dict[str, Any] = {}
        known_cases: set[str] = set()
        with self.hub.uow() as uow:
            conn = uow.connection
            by_ext = {
                r.external_id: r
                for r in conn.execute(  # type: ignore[union-attr]
                    select(*columns).where(w.c.department == department, w.c.external_id.in_(ids))
                )
            }
            refs = [
                e.hub_reference for e in page if e.hub_reference and e.external_id not in by_ext
            ]
            if refs:  # only the unlinked records need the second look
                by_case = {
                    r.case_id: r
                    for r in conn.execute(  # type: ignore[union-attr]
                        select(*columns).where(w.c.department == department, w.c.case_id.in_(refs))
                    )
                }
                known_cases = set(
                    conn.execute(  # type: ignore[union-attr]
                        select(t.cases.c.hub_id).where(t.cases.c.hub_id.in_(refs))
                    ).scalars()
                )
        return by_ext, by_case, known_cases

    async def _orphan(
        self, event: DepartmentEvent, row, case_known: bool, report: DepartmentReport, heal: bool
    ) -> None:
        if row is None:
            detail = (
                "carries the reference of a case with no work order here"
                if case_known
                else "carries a hub reference the hub does not know"
            )
        elif row.external_id:
            detail = f"a second record for a case the hub links to {row.external_id}"
        else:
            detail = "the department has it; the hub never linked it (create answer lost?)"
        finding = report.add(
            Finding(
                ORPHAN,
                event.department,
                event.hub_reference,
                event.external_id,
                detail,
                row.raw_status if row else None,
                event.raw_code,
            )
        )
        if heal and row is not None and not row.external_id:
            await self._link(HubRow(*row), event, finding, report, ORPHAN)

    # ----------------------------------------------------------------------- healing

    async def _relink(
        self,
        row: HubRow,
        ref: ExternalRef,
        adapter: Adapter,
        finding: Finding,
        report: DepartmentReport,
        kind: str = ORPHAN,
    ) -> None:
        events = (
            await adapter.get_status([ref.external_id])
            if _has(adapter, "get_status")
            else [_event_of(adapter, ref, self.clock())]
        )
        if not events:
            return
        self._unlink(row, adapter.department)
        await self._link(row, events[0], finding, report, kind)

    async def _link(
        self,
        row: HubRow,
        event: DepartmentEvent,
        finding: Finding,
        report: DepartmentReport,
        kind: str,
    ) -> None:
        """Adopt the department's record through the status sync (links, applies status),
        then settle the create the hub still holds open or dead."""
        stamp = f"{self.clock().timestamp():.0f}"
        fresh = event.model_copy(
            update={
                "external_event_id": f"reconcile:{event.external_event_id}:{stamp}",
                "hub_reference": row.case_id,
            }
        )
        await self.sync.apply_async(event.department, [fresh], source=RECONCILE)
        with self.hub.uow() as uow:
            for item in uow.outbox.for_case(row.case_id):
                if (
                    item.department == event.department
                    and item.operation == "create"
                    and item.state in (OutboxState.DEAD, OutboxState.PENDING)
                ):
                    uow.outbox.mark_skipped(
                        item.id, reason=f"adopted {event.external_id} by reconciliation"
                    )
            uow.work_orders.update(
                row.case_id, event.department, delivery_state=DeliveryState.DELIVERED
            )
            uow.timeline.append(
                _healed_event(
                    row.case_id,
                    event.department,
                    f"reconcile linked department record {event.external_id}",
                )
            )
            uow.commit()
        finding.healed = f"linked {event.external_id}"
        report.healed[kind] += 1

    def _unlink(self, row: HubRow, department: str) -> None:
        with self.hub.uow() as uow:
            uow.work_orders.update(row.case_id, department, external_id=None, last_sequence=None)
            uow.commit()

    def _redispatch(
        self, row: HubRow, department: str, finding: Finding, report: DepartmentReport
    ) -> None:
        """Deliver again through the outbox: a fresh create keyed by the lost record."""
        with self.hub.uow() as uow:
            uow.work_orders.update(
                row.case_id,
                department,
                external_id=None,
                delivery_state=DeliveryState.PENDING,
                last_sequence=None,
            )
            uow.outbox.enqueue(
                case_id=row.case_id,
                department=department,
                operation="create",
                idempotency_key=f"{row.case_id}:{department}:create:reconcile:{row.external_id}",
            )
            uow.timeline.append(
                _healed_event(
                    row.case_id,
                    department,
                    f"department lost work order {row.external_id}: re-dispatched by reconcile",
                    EventLevel.WARNING,
                )
            )
            uow.commit()
        finding.healed = "re-dispatched"
        report.healed[MISSING] += 1

    # ----------------------------------------------------------------------- storage

    def _store(self, report: ReconcileReport, department: str | None) -> int:
        r = t.reconcile_runs
        with self.hub.uow() as uow:
            run_id = uow.connection.execute(  # type: ignore[union-attr]
                insert(r)
                .values(
                    department=department,
                    started_at=report.started_at,
                    finished_at=report.finished_at,
                    healed=report.heal,
                    counts=report.counts,
                    report={},
                )
                .returning(r.c.id)
            ).scalar_one()
            report.run_id = run_id
            uow.connection.execute(  # type: ignore[union-attr]
                update(r).where(r.c.id == run_id).values(report=report.as_dict())
            )
            uow.commit()
        return run_id


def plugin_sections(hub: Hub, *, heal: bool = False) -> dict[str, Any]:
    """Sections plugins add to the report: any plugin with ``reconcile_section(hub, heal=)``
    (payments: paid not dispatched, dispatched not paid, refunds pending)."""
    sections: dict[str, Any] = {}
    for plugin in hub.pm.get_plugins():
        section = getattr(plugin, "reconcile_section", None)
        if callable(section):
            try:
                sections[hub.pm.get_name(plugin) or repr(plugin)] = section(hub, heal=heal)
            except Exception as exc:  # one plugin's failure must not hide the rest
                log.exception("reconcile section of %s failed", plugin)
                sections[hub.pm.get_name(plugin) or repr(plugin)] = {"error": str(exc)}
    return sections


def last_report(hub: Hub, department: str | None = None) -> dict[str, Any] | None:
    """The newest stored run (for `hub reconcile --last`)."""
    r = t.reconcile_runs
    query = select(r.c.report).order_by(desc(r.c.id)).limit(1)
    if department:
        query = query.where(and_(r.c.department == department))
    with hub.uow() as uow:
        return uow.connection.execute(query).scalar_one_or_none()  # type: ignore[union-attr]


def _why_stuck(row: HubRow, item, now: datetime, after: timedelta) -> str | None:
    if row.delivery_state == DeliveryState.DEAD:
        return "create dead-lettered: needs a human (replay or close)"
    if row.delivery_state != DeliveryState.PENDING or item is None:
        return None
    if item.state == OutboxState.PENDING and item.last_error_class in UNRESOLVED:
        if now - item.created_at > after:
            return f"unknown outcome ({item.last_error_class}) unresolved since {item.created_at}"
    elif item.state == OutboxState.PENDING and now - item.created_at > after:
        return f"undelivered since {item.created_at.isoformat()}"
    return None


async def _lookup(adapter: Adapter, hub_id: str) -> ExternalRef | None:
    if not adapter.supports(Capability.FIND_BY_REFERENCE):
        return None
    return await adapter.find_by_reference(hub_id)


def _has(adapter: Adapter, method: str) -> bool:
    inner = getattr(adapter, "inner", adapter)
    return getattr(type(inner), method) is not getattr(Adapter, method)


class Patient:
    """The adapter, with department reads retried on Transient errors (a flaky department
    must not turn into false "missing" findings). Writes never go through here."""

    ATTEMPTS, BASE_DELAY, MAX_DELAY = 6, 0.2, 5.0

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if name in ("get_status", "find_by_reference", "poll_changes", "list_records"):
            return self._retrying(value)
        return value

    def _retrying(self, method: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(1, self.ATTEMPTS + 1):
                try:
                    return await method(*args, **kwargs)
                except Transient as error:
                    if attempt == self.ATTEMPTS:
                        raise
                    delay = error.retry_after or self.BASE_DELAY * 2 ** (attempt - 1)
                    await asyncio.sleep(min(delay, self.MAX_DELAY))
            raise AssertionError("unreachable")

        return call


def _event_of(adapter: Adapter, ref: ExternalRef, now: datetime) -> DepartmentEvent:
    return DepartmentEvent(
        department=adapter.department,
        external_event_id=f"lookup:{ref.external_id}:{ref.raw_status}",
        external_id=ref.external_id,
        hub_reference=ref.hub_reference,
        raw_code=ref.raw_status or "",
        occurred_at=now,
    )


def _healed_event(
    case_id: str, department: str, message: str, level: EventLevel = EventLevel.INFO
) -> CaseEvent:
    return CaseEvent(
        case_id=case_id,
        kind="reconciled",
        actor="reconcile",
        source=RECONCILE,
        department=department,
        level=level,
        message=message,
    )
