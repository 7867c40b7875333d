"""Payments adapter (Stripe-shaped PaymentIntents) and the fee gate before dispatch.

See docs/adapters/payments.md. Hook implementations live in :mod:`adapters.payments.plugin`
and are re-exported here, so the entry point ``payments = "adapters.payments"`` registers
all of them.
"""

from __future__ import annotations

from adapters.payments.adapter import PaymentIntent, PaymentsAdapter, PaymentsConfig
from adapters.payments.plugin import (
    hub_before_dispatch,
    hub_enrich_case,
    hub_on_status_change,
    hub_periodic_jobs,
    payments_report,
    receive_webhook,
)
from hub.hookspecs import hookimpl

__all__ = [
    "PaymentIntent",
    "PaymentsAdapter",
    "PaymentsConfig",
    "hub_before_dispatch",
    "hub_enrich_case",
    "hub_on_status_change",
    "hub_periodic_jobs",
    "hub_register_adapters",
    "payments_report",
    "receive_webhook",
    "reconcile_section",
]


@hookimpl
def hub_register_adapters() -> list[type[PaymentsAdapter]]:
    return [PaymentsAdapter]


def reconcile_section(hub, *, heal: bool = False) -> dict:
    """The payments section of `hub reconcile` (found by hub.services.reconcile)."""
    return payments_report(hub, heal=heal)
