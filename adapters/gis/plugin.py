"""GIS in the case pipeline: intake-time enrichment from cache, the ``enrich`` outbox
operation, and the route correction it makes before dispatch.

Intake never waits for the GIS (hooks are synchronous and run inside the intake
transaction). The ``hub_enrich_case`` hook answers from the process's GIS cache only. On a
miss it flags ``enrichment_pending``, stamps ``attributes.gis_status`` and the case is
routed by service code alone. Then:

- ``awaiting`` (a route rule of the service reads a GIS-filled field, e.g. the ward rule
  for potholes): ``hub_before_dispatch`` holds the create (outbox ``held``), so the route
  can still be corrected;
- ``pending`` (routing does not depend on the GIS): the create goes at once; the GIS facts
  are added later for the record.

After intake commits, ``hub_on_status_change`` (routed) enqueues one ``enrich`` row for the
GIS department. Its handler (the Dispatcher, with the outbox's retries, backoff and circuit
breaker) asks the GIS, then in one transaction writes the facts and re-routes:

Ordering. The outbox runs operations per (case, department) in id order, but the ``enrich``
row lives under the GIS department, so nothing orders it against the create. The handler
therefore decides on the create row itself, inside its transaction: a create that was never
attempted (``attempts = 0``) and is not leased is changed (same department: team, type,
priority, SLA; another department: that create is skipped and a new one is enqueued in the
same state); the guarded UPDATE that checks this also locks the row (PostgreSQL) or the
database (SQLite), so a worker cannot claim it in between. A create that is leased right
now makes the handler retry shortly; one that was attempted or delivered is never moved
(its department may have it): the difference is written on the timeline
(``route_differs``) for a person to act on.

A GIS that stays down: after ``max_hold_seconds`` (or the last attempt, or a permanent
error) the held create is released on the service-code route (``gis_status: unavailable``)
and enrichment keeps retrying for the record. While the GIS circuit is open no enrich row
is attempted, so that check alone could hold a case far past the limit: the periodic job
``gis:release-overdue`` (``hub_periodic_jobs``) releases every overdue hold and re-queues a
lost enrich row, whatever the circuit does.

Releasing obeys every hold, not only ours: :mod:`hub.services.holds` releases the create
only when no plugin's ``hub_before_dispatch`` holds the case any more (no fee unpaid, the
GIS not awaited). The plugin never touches the store: every write goes through that service.

The hooks take the running hub as their ``hub`` argument.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from adapters.gis.adapter import STATUS_FIELD, GisAdapter
from hub.adapters import DeliveryError, Permanent, Transient
from hub.hookspecs import hookimpl
from hub.model import (
    Case,
    CaseEvent,
    CaseStatus,
    DispatchDecision,
    EventLevel,
    PeriodicJob,
    Route,
    StatusEvent,
    as_utc,
    utcnow,
)
from hub.services import holds

if TYPE_CHECKING:
    from hub.services.holds import CaseSession, OutboxItem
    from hub.services.runtime import Hub

log = logging.getLogger(__name__)

ENRICH = "enrich"
AWAITING, PENDING, DONE, UNAVAILABLE = "awaiting", "pending", "done", "unavailable"
FLAG = "enrichment_pending"
HOLD_STATE = "awaiting_enrichment"
LOCATION_FIELDS = {"lat", "long", "address_string", "zipcode", "attributes.asset_id"}


def gis_adapter(hub: Hub | None) -> GisAdapter | None:
    """The configured GIS department's adapter (the first department on adapter `gis`)."""
    if hub is None:
        return None
    for name, dept in hub.config.enabled_departments().items():
        if dept.adapter == GisAdapter.name:
            adapter = hub.adapter(name)
            return adapter if isinstance(adapter, GisAdapter) else None
    return None


# --------------------------------------------------------------------------- hooks


@hookimpl
def hub_enrich_case(hub: Hub, case: Case, context: dict[str, Any]) -> dict[str, Any] | None:
    gis = gis_adapter(hub)
    if gis is None or case.attributes.get(STATUS_FIELD) == DONE:
        return None
    if case.lat is None and case.long is None and not case.address_string:
        return None  # nothing to locate
    changes, complete = gis.enrich_from_cache(case)
    attributes = dict(changes.pop("attributes", {}))
    if complete:
        attributes[STATUS_FIELD] = DONE
    else:
        context.setdefault("flags", []).append(FLAG)
        attributes[STATUS_FIELD] = AWAITING if _must_wait(hub, gis, case) else PENDING
    return {**changes, "attributes": attributes}


@hookimpl
def hub_before_dispatch(case: Case, department: str) -> DispatchDecision | None:
    if case.attributes.get(STATUS_FIELD) != AWAITING:
        return None
    return DispatchDecision(
        hold=True,
        state=HOLD_STATE,
        reason="waiting for GIS: this service is routed by location",
        detail={"flag": FLAG},
    )


@hookimpl
def hub_on_status_change(
    hub: Hub, case: Case, old: CaseStatus, new: CaseStatus, event: StatusEvent | None
) -> None:
    if new is not CaseStatus.ROUTED or case.attributes.get(STATUS_FIELD) not in (AWAITING, PENDING):
        return
    gis = gis_adapter(hub)
    if gis is None:
        return
    try:
        enqueue_enrich(hub, case.hub_id, gis.department)
    except Exception:  # a missed enqueue is found again by enrichment_report(heal=True)
        log.exception("could not enqueue GIS enrichment for case %s", case.hub_id)


def enqueue_enrich(hub: Hub, case_id: str, department: str) -> bool:
    return holds.enqueue_operation(
        hub, case_id, department, ENRICH, key=_enrich_key(case_id, department)
    )


def _enrich_key(case_id: str, department: str) -> str:
    return f"{case_id}:{department}:{ENRICH}"


def _must_wait(hub: Hub | None, gis: GisAdapter, case: Case) -> bool:
    policy = gis.config.hold_for_enrichment
    if policy != "auto" or hub is None:
        return policy == "always"
    fields = LOCATION_FIELDS | {f"attributes.{name}" for name in gis.config.layers}
    for mapping in hub.mappings.departments.values():
        for rule in mapping.routes:
            if rule.service_code == case.service_code and set(rule.when or {}) & fields:
                return True
    return False


# --------------------------------------------------------------------------- the operation


async def deliver_enrich(hub: Hub, item: OutboxItem, case: Case, order: Any) -> str:
    """Outbox handler of ``enrich``: ask the GIS, then apply (see the module doc)."""
    adapter = hub.adapter(item.department)
    if not isinstance(adapter, GisAdapter):
        raise Permanent(f"department {item.department} is not a GIS")
    try:
        changes = await adapter.enrich(case)
    except DeliveryError as error:
        if _give_up_holding(hub, item, adapter, error):
            await asyncio.to_thread(release_unenriched, hub, case.hub_id, error.message)
        raise
    message = await asyncio.to_thread(apply_enrichment, hub, case.hub_id, changes)
    if message is None:  # its create is being delivered right now: apply after it
        again = int(item.payload.get("round", 0)) + 1
        await asyncio.to_thread(_enqueue_again, hub, case.hub_id, item.department, again)
        return f"create in flight: enrichment re-queued (round {again})"
    return message


def _enqueue_again(hub: Hub, case_id: str, department: str, round_: int) -> None:
    """A new row, not a retry: waiting for a create is no failure of the GIS (a retry
    would count toward its circuit breaker). Lookups then come from the cache."""
    if round_ > 50:
        raise Permanent("create stayed in flight too long; enrichment abandoned")
    holds.enqueue_operation(
        hub,
        case_id,
        department,
        ENRICH,
        key=f"{case_id}:{department}:{ENRICH}:{round_}",
        payload={"round": round_},
        due=utcnow() + timedelta(seconds=0.5),
    )


def _give_up_holding(hub: Hub, item: OutboxItem, adapter: GisAdapter, error: Exception) -> bool:
    waited = utcnow() - as_utc(item.created_at)
    last = item.attempts >= hub.config.policy(item.department).max_attempts
    too_long = waited >= timedelta(seconds=adapter.config.max_hold_seconds)
    return isinstance(error, Permanent) or last or too_long


def release_unenriched(hub: Hub, case_id: str, reason: str) -> int:
    """Stop holding for the GIS: dispatch on the service-code route."""
    with holds.case_session(hub) as session:
        case = session.case(case_id)
        if case is None or case.attributes.get(STATUS_FIELD) != AWAITING:
            return 0
        session.update_attributes(case, {STATUS_FIELD: UNAVAILABLE})
        session.log(
            _event(
                case,
                "enrichment_unavailable",
                EventLevel.WARNING,
                f"GIS unavailable ({reason}): dispatched on the service-code route",
            )
        )
        released = _release_if_clear(session, case)
        session.commit()
        return released


class _CreateInFlight(Exception):
    pass


def apply_enrichment(hub: Hub, case_id: str, changes: dict[str, Any]) -> str | None:
    """Write the GIS facts and correct the route while the create is still unsent.
    None: the create is in flight (a case write now would race its settlement)."""
    try:
        with holds.case_session(hub) as session:
            message = _apply(hub, session, case_id, changes)
            session.commit()
            return message
    except _CreateInFlight:
        return None
    except holds.CaseChanged:
        raise Transient("case changed while enriching; will apply again", retry_after=0.2) from None


def _apply(hub: Hub, session: CaseSession, case_id: str, changes: dict[str, Any]) -> str:
    case = session.case(case_id)
    if case is None:
        raise Permanent("case is gone")
    if case.attributes.get(STATUS_FIELD) == DONE:
        return "already enriched"
    held_for_us = case.attributes.get(STATUS_FIELD) == AWAITING
    version = case.version
    filled = _merge(case, changes)
    create = _create_row(session, case)
    note = "no route to correct"
    if case.department is not None and create is not None:
        if not session.claim_if_idle(create):
            raise _CreateInFlight
        note = _correct_route(hub, session, case, session.delivery(create.id) or create)
    case.version += 1
    session.save_case(case, expected_version=version)
    session.log(
        _event(
            case, "enriched", EventLevel.INFO, f"GIS enrichment: {note}", detail={"fields": filled}
        )
    )
    released = _release_if_clear(session, case) if held_for_us else 0
    return f"enriched ({', '.join(filled) or 'nothing new'}); {note}" + (
        "; create released" if released else ""
    )


def _merge(case: Case, changes: dict[str, Any]) -> list[str]:
    changes = dict(changes)
    attributes = changes.pop("attributes", {}) or {}
    filled = []
    for name, value in changes.items():
        if getattr(case, name) in (None, "") and value is not None:
            setattr(case, name, value)
            filled.append(name)
    merged = dict(case.attributes)
    for name, value in attributes.items():
        if name == STATUS_FIELD or merged.get(name) in (None, ""):
            if name != STATUS_FIELD:
                filled.append(f"attributes.{name}")
            merged[name] = value
    merged[STATUS_FIELD] = DONE
    case.attributes = merged
    return sorted(filled)


def _create_row(session: CaseSession, case: Case) -> OutboxItem | None:
    return next(
        (
            item
            for item in session.deliveries(case.hub_id)
            if item.operation == "create" and item.department == case.department
        ),
        None,
    )


def _correct_route(hub: Hub, session: CaseSession, case: Case, create: OutboxItem) -> str:
    route = _route(hub, case)
    if route is None or _same(case, route):
        return f"route unchanged ({case.department}/{case.team or '-'})"
    if create.attempts or create.state not in ("pending", "held"):
        session.log(
            _event(
                case,
                "route_differs",
                EventLevel.WARNING,
                f"GIS says {route.department}/{route.team or '-'} but the create to"
                f" {case.department} was already sent: not moved",
                detail={"department": route.department, "team": route.team},
            )
        )
        return "route differs, create already sent (not moved)"
    old = f"{case.department}/{case.team or '-'}"
    if route.department != case.department:
        reason = f"rerouted by GIS to {route.department}"
        session.move_unsent_create(case, create, route.department, reason)
    _apply_route(case, route)
    session.update_work_order(case.hub_id, case.department, work_order_type=route.work_order_type)
    session.log(
        _event(
            case,
            "route_corrected",
            EventLevel.INFO,
            f"route corrected by GIS: {old} → {route.department}/{route.team or '-'}",
            detail={"reason": route.reason, "work_order_type": route.work_order_type},
        )
    )
    return f"route corrected to {route.department}/{route.team or '-'}"


def _route(hub: Hub, case: Case) -> Route | None:
    default = hub.mappings.route(case)
    return hub.pm.hook.hub_choose_route(hub=hub, case=case, default=default)


def _same(case: Case, route: Route) -> bool:
    return (route.department, route.team, route.work_order_type) == (
        case.department,
        case.team,
        case.work_order_type,
    ) and (route.priority is None or route.priority == case.priority)


def _apply_route(case: Case, route: Route) -> None:
    case.department = route.department
    case.work_order_type = route.work_order_type
    case.team = route.team
    if route.priority is not None:
        case.priority = route.priority
    if route.sla_hours is not None:
        case.sla_due = case.requested_datetime + timedelta(hours=route.sla_hours)


def _release_if_clear(session: CaseSession, case: Case) -> int:
    return session.release_if_unheld(
        case, actor="gis", message="no hold left: create released for dispatch"
    )


def _event(
    case: Case, kind: str, level: EventLevel, message: str, *, detail: dict | None = None
) -> CaseEvent:
    return CaseEvent(
        case_id=case.hub_id,
        kind=kind,
        actor="gis",
        level=level,
        department=case.department,
        message=message,
        detail=detail or {},
    )


# --------------------------------------------------------------------------- reconcile


def enrichment_report(hub: Hub, *, heal: bool = False) -> dict[str, Any]:
    """Cases waiting for the GIS with no ``enrich`` row (an enqueue lost to a crash between
    intake's commit and the hook); ``heal`` enqueues them."""
    gis = gis_adapter(hub)
    if gis is None:
        return {"configured": False}
    orphans: list[str] = []
    with holds.case_session(hub) as session:
        for case, deliveries in _held_for_us(session):
            if not any(i.operation == ENRICH for i in deliveries):
                orphans.append(case.hub_id)
                if heal:
                    key = _enrich_key(case.hub_id, gis.department)
                    session.enqueue(case.hub_id, gis.department, ENRICH, key=key)
        session.commit()
    return {"configured": True, "awaiting_without_job": orphans, "healed": heal}


def _held_for_us(session: CaseSession) -> list[tuple[Case, list[OutboxItem]]]:
    """The held cases still awaiting the GIS, each with its outbox rows in id order. Read
    set-wise (a few statements, not one per case): the sweep runs every few seconds and
    a GIS outage is exactly when the held cases pile up."""
    case_ids = session.held_case_ids()
    cases = session.cases(case_ids)
    awaiting = [
        cases[case_id]
        for case_id in case_ids
        if case_id in cases and cases[case_id].attributes.get(STATUS_FIELD) == AWAITING
    ]
    deliveries = session.deliveries_for([case.hub_id for case in awaiting])
    return [(case, deliveries[case.hub_id]) for case in awaiting]


@hookimpl
def hub_periodic_jobs(hub: Hub) -> list[PeriodicJob] | None:
    gis = gis_adapter(hub)
    if gis is None:
        return None
    every = min(60.0, max(5.0, gis.config.max_hold_seconds / 4))
    return [PeriodicJob(name="gis:release-overdue", every_seconds=every, run=release_overdue)]


async def release_overdue(hub: Hub) -> dict[str, Any]:
    """Release every create held for the GIS longer than ``max_hold_seconds``; re-queue
    enrich rows lost to a crash (the reconcile's heal, between nightly runs)."""
    return await asyncio.to_thread(_release_overdue, hub)


def _release_overdue(hub: Hub) -> dict[str, Any]:
    gis = gis_adapter(hub)
    if gis is None:
        return {}
    limit = timedelta(seconds=gis.config.max_hold_seconds)
    now = utcnow()
    overdue = []
    with holds.case_session(hub) as session:
        for case, deliveries in _held_for_us(session):
            held = [i for i in deliveries if i.state == "held"]
            if held and now - min(as_utc(i.created_at) for i in held) >= limit:
                overdue.append(case.hub_id)
    reason = f"held longer than max_hold_seconds ({gis.config.max_hold_seconds:g} s)"
    released = sum(release_unenriched(hub, case_id, reason) for case_id in overdue)
    requeued = enrichment_report(hub, heal=True)["awaiting_without_job"]
    return {"overdue": len(overdue), "released": released, "enrich_requeued": len(requeued)}


def _register() -> None:
    from hub.services.dispatch import register_operation

    register_operation(ENRICH, deliver_enrich)


_register()
