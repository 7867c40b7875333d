"""The payment gate: fee services wait in ``awaiting_payment`` until the fee is paid.

Flow (docs/adapters/payments.md):

1. intake, ``hub_enrich_case``: a service whose catalogue entry has a ``fee`` gets
   ``attributes.payment_status: required`` and the fee (int minor units + currency);
2. ``hub_before_dispatch`` holds every case whose payment status is not ``succeeded``: the
   create is written ``held`` (state ``awaiting_payment`` on the timeline);
3. after commit, ``hub_on_status_change`` (routed) enqueues ``payment_intent`` for the
   payments department; its handler creates the PaymentIntent (Idempotency-Key = case),
   stores ``payment_reference``/``payment_url`` on the case and schedules a status poll;
4. the result arrives by signed webhook (``POST /webhooks/payments`` → one ``payment_event``
   row per event id: a replay is a duplicate key and changes nothing) or by the poll;
5. on success the held create is released (``CaseSession.release_if_unheld`` of
   :mod:`hub.services.holds`) in the same transaction that records the payment; the
   stored status makes it happen once;
6. ``hub_on_status_change`` (cancelled) enqueues ``payment_cancel``: an unpaid intent is
   cancelled, a paid one refunded (a cancelled case was never served), and the held create
   is skipped so nothing reaches the department.

Release obeys every hold: :mod:`hub.services.holds` releases the create only when no
plugin's ``hub_before_dispatch`` holds the case any more (no fee unpaid, GIS not awaited).
The plugin never touches the store: every write goes through that service.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from adapters.payments.adapter import (
    PAID,
    PaymentIntent,
    PaymentsAdapter,
    WebhookInvalid,
)
from hub.adapters import Permanent, Transient
from hub.hookspecs import hookimpl
from hub.model import (
    Case,
    CaseEvent,
    CaseStatus,
    DeliveryState,
    DispatchDecision,
    EventLevel,
    PeriodicJob,
    StatusEvent,
    WorkOrder,
    utcnow,
)
from hub.services import holds

if TYPE_CHECKING:
    from hub.services.holds import CaseSession, OutboxItem
    from hub.services.runtime import Hub

log = logging.getLogger(__name__)

STATUS = "payment_status"
REQUIRED = "required"
HOLD_STATE = "awaiting_payment"
INTENT, POLL, EVENT, CANCEL = "payment_intent", "payment_poll", "payment_event", "payment_cancel"
FINAL = {PAID, "refunded", "canceled"}
TERMINAL_OR_PAID = {PAID, "canceled"}


def payments_adapter(hub: Hub | None) -> PaymentsAdapter | None:
    if hub is None:
        return None
    for name, dept in hub.config.enabled_departments().items():
        if dept.adapter == PaymentsAdapter.name:
            adapter = hub.adapter(name)
            return adapter if isinstance(adapter, PaymentsAdapter) else None
    return None


def fee_of(hub: Hub, service_code: str) -> tuple[int, str] | None:
    service = hub.mappings.catalogue.get(service_code)
    fee = getattr(service, "fee", None)
    return (fee.amount_cents, fee.currency) if fee else None


# --------------------------------------------------------------------------- hooks


@hookimpl
def hub_enrich_case(hub: Hub, case: Case, context: dict[str, Any]) -> dict[str, Any] | None:
    if STATUS in case.attributes or payments_adapter(hub) is None:
        return None
    fee = fee_of(hub, case.service_code)  # type: ignore[arg-type]
    if fee is None:
        return None
    amount, currency = fee
    return {"attributes": {STATUS: REQUIRED, "fee_amount_cents": amount, "fee_currency": currency}}


@hookimpl
def hub_before_dispatch(case: Case, department: str) -> DispatchDecision | None:
    status = case.attributes.get(STATUS)
    if status is None or status == PAID:
        return None
    amount = int(case.attributes.get("fee_amount_cents") or 0)
    currency = str(case.attributes.get("fee_currency") or "")
    return DispatchDecision(
        hold=True,
        state=HOLD_STATE,
        reason=f"fee of {amount // 100}.{amount % 100:02d} {currency} not paid yet",
        detail={"amount_cents": amount, "currency": currency},
    )


@hookimpl
def hub_on_status_change(
    hub: Hub, case: Case, old: CaseStatus, new: CaseStatus, event: StatusEvent | None
) -> None:
    status = case.attributes.get(STATUS)
    if status is None or new not in (CaseStatus.ROUTED, CaseStatus.CANCELLED):
        return
    adapter = payments_adapter(hub)
    if adapter is None:
        return
    operation = INTENT if new is CaseStatus.ROUTED else CANCEL
    if operation == INTENT and status != REQUIRED:
        return
    try:
        _enqueue(hub, case.hub_id, adapter.department, operation)
    except Exception:  # found again by payments_report(heal=True)
        log.exception("could not enqueue %s for case %s", operation, case.hub_id)


def _key(case_id: str, department: str, operation: str, suffix: str = "") -> str:
    return f"{case_id}:{department}:{operation}{suffix}"[:160]


def _enqueue(
    hub: Hub,
    case_id: str,
    department: str,
    operation: str,
    *,
    suffix: str = "",
    payload: dict[str, Any] | None = None,
    due: Any = None,
) -> bool:
    key = _key(case_id, department, operation, suffix)
    return holds.enqueue_operation(
        hub, case_id, department, operation, key=key, payload=payload, due=due
    )


def _enqueue_in(
    session: CaseSession, case_id: str, department: str, operation: str, *, suffix: str = ""
) -> bool:
    key = _key(case_id, department, operation, suffix)
    return session.enqueue(case_id, department, operation, key=key)


# --------------------------------------------------------------------------- operations


def _adapter(hub: Hub, item: OutboxItem) -> PaymentsAdapter:
    adapter = hub.adapter(item.department)
    if not isinstance(adapter, PaymentsAdapter):
        raise Permanent(f"department {item.department} is not a payments service")
    return adapter


async def deliver_intent(hub: Hub, item: OutboxItem, case: Case, order: Any) -> str:
    adapter = _adapter(hub, item)
    if case.status is CaseStatus.CANCELLED:
        await asyncio.to_thread(_record, hub, case.hub_id, {STATUS: "canceled"}, None)
        return "case cancelled before payment: no intent created"
    reference = case.attributes.get("payment_reference")
    if reference:
        intent = await adapter.get_intent(reference)
    else:
        amount = int(case.attributes["fee_amount_cents"])
        currency = str(case.attributes["fee_currency"])
        intent = await adapter.create_intent(
            case.hub_id, amount, currency, description=f"311 {case.service_code} {case.hub_id}"
        )
    dept, config = item.department, adapter.config
    await asyncio.to_thread(apply_intent, hub, case.hub_id, intent, "intent", dept, first=True)
    if intent.status not in FINAL and config.max_polls > 0:
        delay = config.poll_delay_seconds
        await asyncio.to_thread(_schedule_poll, hub, case.hub_id, dept, 1, delay)
    return f"payment intent {intent.id} ({intent.status})"


async def deliver_poll(hub: Hub, item: OutboxItem, case: Case, order: Any) -> str:
    """The polling fallback for lost webhooks: a few polls, the delay doubling each time."""
    adapter = _adapter(hub, item)
    reference = case.attributes.get("payment_reference")
    if not reference or case.attributes.get(STATUS) in FINAL:
        return "nothing to poll"
    intent = await adapter.get_intent(reference)
    await asyncio.to_thread(apply_intent, hub, case.hub_id, intent, "poll", item.department)
    number = int(item.payload.get("poll", 1))
    if intent.status not in FINAL and number < adapter.config.max_polls:
        await asyncio.to_thread(
            _schedule_poll,
            hub,
            case.hub_id,
            item.department,
            number + 1,
            adapter.config.poll_delay_seconds * 2**number,
        )
    return f"polled {intent.id}: {intent.status}"


async def deliver_event(hub: Hub, item: OutboxItem, case: Case, order: Any) -> str:
    """A verified webhook event (queued by the webhook route)."""
    _adapter(hub, item)
    payload = item.payload
    intent = PaymentIntent.model_validate(payload["intent"])
    if payload["type"] == "charge.refunded":
        intent = intent.model_copy(update={"status": "refunded"})
    await asyncio.to_thread(apply_intent, hub, case.hub_id, intent, "webhook", item.department)
    return f"{payload['type']} applied ({intent.status})"


async def deliver_cancel(hub: Hub, item: OutboxItem, case: Case, order: Any) -> str:
    """Case cancelled: skip the held create; cancel an unpaid intent, refund a paid one."""
    adapter = _adapter(hub, item)
    await asyncio.to_thread(_skip_unsent, hub, case.hub_id)
    reference = case.attributes.get("payment_reference")
    if not reference:
        await asyncio.to_thread(_record, hub, case.hub_id, {STATUS: "canceled"}, None)
        return "no intent to cancel"
    intent = await adapter.get_intent(reference)
    if intent.status not in TERMINAL_OR_PAID:
        try:
            intent = await adapter.cancel_intent(reference)
        except Permanent:  # paid in the meantime: refund below
            intent = await adapter.get_intent(reference)
    if intent.status == PAID:
        refund = await adapter.refund(reference)
        update = {STATUS: "refunded", "refund_reference": refund.id}
        await asyncio.to_thread(_record, hub, case.hub_id, update, ("refunded", refund.id))
        return f"refunded {refund.amount} ({refund.id})"
    await asyncio.to_thread(_record, hub, case.hub_id, {STATUS: intent.status}, None)
    return f"intent {reference} {intent.status}"


# --------------------------------------------------------------------------- applying


def apply_intent(
    hub: Hub,
    case_id: str,
    intent: PaymentIntent,
    source: str,
    department: str,
    *,
    first: bool = False,
) -> int:
    """Record the intent's status; on success release the held create (once). Returns the
    number of outbox rows released."""
    for _ in range(3):  # two writers (webhook + poll): the loser re-reads and sees "paid"
        try:
            with holds.case_session(hub) as session:
                released = _apply(session, case_id, intent, source, department, first)
                session.commit()
                return released
        except holds.CaseChanged:
            continue
    raise Transient("case kept changing while recording the payment", retry_after=0.2)


def _apply(
    session: CaseSession,
    case_id: str,
    intent: PaymentIntent,
    source: str,
    dept: str,
    first: bool,
) -> int:
    case = session.case(case_id)
    if case is None:
        raise Permanent("case is gone")
    current = case.attributes.get(STATUS)
    new = intent.status
    if current in ("refunded", "canceled") or (current == PAID and new != "refunded"):
        return 0  # never regress: a late or replayed event changes nothing
    updates: dict[str, Any] = {STATUS: new, "payment_reference": intent.id}
    if first or not case.attributes.get("payment_url"):
        updates["payment_url"] = intent.url
    changed = any(case.attributes.get(k) != v for k, v in updates.items())
    if changed:
        session.update_attributes(case, updates)
        session.log(_event(case, *_describe(intent, source, first)))
    if new != PAID:
        return 0
    if case.status is CaseStatus.CANCELLED:
        _enqueue_in(session, case_id, dept, CANCEL, suffix=":after-paid")
        return 0
    return _release_if_clear(session, case)


def _describe(intent: PaymentIntent, source: str, first: bool) -> tuple[str, str, dict]:
    detail = {
        "reference": intent.id,
        "status": intent.status,
        "amount_cents": intent.amount,
        "currency": intent.currency,
        "source": source,
    }
    if first:
        detail["url"] = intent.url
        return "payment_requested", f"payment requested: pay at {intent.url}", detail
    kind = {PAID: "payment_succeeded", "refunded": "payment_refunded"}.get(
        intent.status, "payment_status"
    )
    return kind, f"payment {intent.id}: {intent.status} ({source})", detail


def _record(hub: Hub, case_id: str, updates: dict[str, Any], event: tuple | None) -> None:
    def describe(case: Case) -> CaseEvent:
        kind, reference = event
        return _event(
            case, f"payment_{kind}", f"payment {kind} ({reference})", {"reference": reference}
        )

    holds.update_case_attributes(hub, case_id, updates, event=describe if event else None)


def _skip_unsent(hub: Hub, case_id: str) -> None:
    """A cancelled case's held create (and what queued behind it) will never be sent."""
    holds.cancel_undispatched(hub, case_id, reason="case cancelled before dispatch")


def _schedule_poll(hub: Hub, case_id: str, department: str, number: int, delay: float) -> None:
    _enqueue(
        hub,
        case_id,
        department,
        POLL,
        suffix=f":{number}",
        payload={"poll": number},
        due=utcnow() + timedelta(seconds=delay),
    )


def _release_if_clear(session: CaseSession, case: Case) -> int:
    return session.release_if_unheld(
        case, actor="payments", message="fee paid: create released for dispatch"
    )


def _event(case: Case, kind: str, message: str, detail: dict | None = None) -> CaseEvent:
    level = EventLevel.WARNING if kind in ("payment_status",) else EventLevel.INFO
    return CaseEvent(
        case_id=case.hub_id,
        kind=kind,
        actor="payments",
        level=level,
        department=case.department,
        message=message,
        detail=detail or {},
    )


# --------------------------------------------------------------------------- webhook


class WebhookRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def receive_webhook(hub: Hub, body: bytes, signature: str | None) -> dict[str, Any]:
    """Verify, then queue the event once per event id. Forged or stale → WebhookRefused;
    a replay of an event already queued → ``{"duplicate": True}`` and nothing changes."""
    adapter = payments_adapter(hub)
    if adapter is None:
        raise WebhookRefused(404, "no payments department configured")
    try:
        adapter.verify_webhook(body, signature)
        event = json.loads(body)
        event_id, kind = str(event["id"]), str(event["type"])
        obj = event["data"]["object"]
    except WebhookInvalid as exc:
        raise WebhookRefused(401, str(exc)) from None
    except (ValueError, KeyError, TypeError):
        raise WebhookRefused(400, "unreadable payment event") from None
    intent = _intent_of(adapter, kind, obj)
    if intent is None or not intent.case_id:
        return {"ignored": f"{kind} is not about a 311 payment"}
    with holds.case_session(hub) as session:
        if session.case(intent.case_id) is None:
            return {"ignored": "unknown case"}
        queued = session.enqueue(
            intent.case_id,
            adapter.department,
            EVENT,
            key=_key(intent.case_id, adapter.department, EVENT, f":{event_id}"),
            payload={"type": kind, "event_id": event_id, "intent": intent.model_dump(mode="json")},
        )
        session.commit()
    return {"accepted": queued, "duplicate": not queued, "event": event_id}


def _intent_of(adapter: PaymentsAdapter, kind: str, obj: dict[str, Any]) -> PaymentIntent | None:
    if kind.startswith("payment_intent."):
        return adapter._intent(obj)
    if kind == "charge.refunded" and obj.get("payment_intent"):
        return PaymentIntent(
            id=str(obj["payment_intent"]),
            status="refunded",
            amount=int(obj.get("amount") or 0),
            currency=str(obj.get("currency") or "").upper(),
            case_id=(obj.get("metadata") or {}).get("hub_case_id"),
        )
    return None


# --------------------------------------------------------------------------- reconcile


def payments_report(hub: Hub, *, heal: bool = False) -> dict[str, Any]:
    """The payments section of reconciliation: paid but not dispatched, dispatched but not
    paid, refunds pending, and fee cases whose intent was never requested. ``heal``
    releases paid holds and enqueues missing intents and refunds (never un-dispatches)."""
    adapter = payments_adapter(hub)
    if adapter is None:
        return {"configured": False}
    fee_codes = [code for code in hub.mappings.catalogue if fee_of(hub, code)]
    found: dict[str, list[str]] = {
        "paid_not_dispatched": [],
        "dispatched_not_paid": [],
        "refunds_pending": [],
        "awaiting_without_intent": [],
        "awaiting_payment": [],
    }
    with holds.case_session(hub) as session:
        for case, orders, ops in _fee_cases(session, fee_codes):
            _check(session, case, orders, ops, adapter.department, found, heal)
        session.commit()
    return {
        "configured": True,
        "healed": heal,
        "counts": {k: len(v) for k, v in found.items()},
        "cases": found,
    }


def _fee_cases(
    session: CaseSession, codes: list[str]
) -> Iterator[tuple[Case, list[WorkOrder], set[str]]]:
    """The fee cases, each with its work orders and the operations queued for it. Read
    set-wise, a chunk of ``BATCH_IDS`` cases at a time: three statements per chunk, not two
    per case (the heal runs every few minutes over every fee case), and memory bounded by
    the chunk. Reading a chunk before healing its cases changes nothing: a heal writes
    only its own case's rows, read before it."""
    if not codes:
        return
    case_ids = session.case_ids_for_services(codes)
    for start in range(0, len(case_ids), holds.BATCH_IDS):
        cases = session.cases(case_ids[start : start + holds.BATCH_IDS])
        orders = session.work_orders_for(list(cases))
        deliveries = session.deliveries_for(list(cases))
        for case_id, case in cases.items():
            yield case, orders[case_id], {i.operation for i in deliveries[case_id]}


def _check(
    session: CaseSession,
    case: Case,
    orders: list[WorkOrder],
    ops: set[str],
    dept: str,
    found: dict,
    heal: bool,
) -> None:
    status = case.attributes.get(STATUS)
    delivered = any(o.delivery_state == DeliveryState.DELIVERED for o in orders)
    waiting = any(o.delivery_state in (DeliveryState.HELD, DeliveryState.PENDING) for o in orders)
    cancelled = case.status is CaseStatus.CANCELLED
    if status is None:
        return  # not gated (payments were not configured when it came in)
    if status == PAID and cancelled:
        found["refunds_pending"].append(case.hub_id)
        if heal:
            _enqueue_in(session, case.hub_id, dept, CANCEL, suffix=":reconcile")
    elif status == PAID and waiting and not cancelled:
        found["paid_not_dispatched"].append(case.hub_id)
        if heal:
            _release_if_clear(session, case)
    elif status != PAID and delivered and status != "refunded":
        found["dispatched_not_paid"].append(case.hub_id)
    elif status == REQUIRED and INTENT not in ops and not cancelled:
        found["awaiting_without_intent"].append(case.hub_id)
        if heal:
            _enqueue_in(session, case.hub_id, dept, INTENT)
    elif status not in FINAL and not cancelled:
        found["awaiting_payment"].append(case.hub_id)


HEAL_EVERY_SECONDS = 300.0


@hookimpl
def hub_periodic_jobs(hub: Hub) -> list[PeriodicJob] | None:
    if payments_adapter(hub) is None:
        return None
    return [PeriodicJob(name="payments:heal", every_seconds=HEAL_EVERY_SECONDS, run=heal_gate)]


async def heal_gate(hub: Hub) -> dict[str, Any]:
    """The reconcile's payments section with ``heal`` (release paid holds, enqueue missing
    intents and refunds; never un-dispatch), every few minutes instead of nightly: a
    webhook lost together with the last status poll no longer waits a day."""
    report = await asyncio.to_thread(payments_report, hub, heal=True)
    return report.get("counts", {})


def _register() -> None:
    from hub.services.dispatch import register_operation

    for operation, handler in (
        (INTENT, deliver_intent),
        (POLL, deliver_poll),
        (EVENT, deliver_event),
        (CANCEL, deliver_cancel),
    ):
        register_operation(operation, handler)


_register()
