"""Built-in plugin: post every canonical status change to the 311 CRM.

Registered like any third-party plugin (``hub_on_status_change``). The hook only enqueues
an outbox row (operation ``crm_callback``, pseudo-department ``crm_callback``); the
Dispatcher delivers it, so a CRM that is down gets the callback later, with backoff, and
a permanent refusal lands in the dead-letter queue like any delivery.

The POST body is JSON, signed exactly like inbound webhooks (``X-Hub-Signature: t=…,v1=…``)
with the secret of the ``crm_callback`` config section, and carries ``Idempotency-Key``
(one per status change) so the CRM can drop a repeat after a timeout.

The hook gets the running hub as its ``hub`` argument; with no ``crm_callback`` section
it does nothing.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import httpx

from hub.adapters import (
    AuthFailed,
    CapabilityNotSupported,
    Permanent,
    Transient,
    UnknownOutcome,
    parse_retry_after,
)
from hub.config import CRM_CALLBACK
from hub.hookspecs import hookimpl
from hub.model import Case, CaseStatus, StatusEvent

if TYPE_CHECKING:
    from hub.services.runtime import Hub
    from hub.store.repository import OutboxItem

log = logging.getLogger(__name__)


def callback_key(case: Case, new: CaseStatus) -> str:
    # The case version after the change is unique per change: one callback each.
    return f"{case.hub_id}:{CRM_CALLBACK}:{case.version}:{new.value}"


def payload(case: Case, old: CaseStatus, new: CaseStatus, event: StatusEvent | None) -> dict:
    """What the CRM gets: Open311 names, no requester contact, no free-text description."""
    return {
        "service_request_id": case.hub_id,
        "source_system": case.source_system,
        "source_id": case.source_id,
        "status": new.open311,
        "hub_status": new.value,
        "previous_status": old.value,
        "updated_datetime": case.updated_datetime.isoformat(),
        "department": case.department,
        "closure": case.closure.model_dump() if case.closure else None,
        "media_urls": [a.url for a in case.evidence] if new.is_final else [],
        "department_code": event.raw_code if event else None,
        "version": case.version,
    }


@hookimpl
def hub_on_status_change(
    hub: Hub, case: Case, old: CaseStatus, new: CaseStatus, event: StatusEvent | None
) -> None:
    config = hub.config.crm_callback
    if config is None or not config.enabled:
        return
    with hub.uow() as uow:
        uow.outbox.enqueue(
            case_id=case.hub_id,
            department=CRM_CALLBACK,
            operation=CRM_CALLBACK,
            idempotency_key=callback_key(case, new),
            payload=payload(case, old, new, event),
        )
        uow.commit()


# --------------------------------------------------------------------------- delivery


async def deliver(hub: Hub, item: OutboxItem, case: Case, order: Any) -> str:
    """One POST to the CRM; failures are classified like an adapter's."""
    from hub.services.webhooks import SIGNATURE_HEADER, signature_header

    config = hub.config.crm_callback
    if config is None or not config.enabled:
        raise CapabilityNotSupported("no crm_callback configured")
    body = json.dumps(item.payload, sort_keys=True, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": item.idempotency_key,
        SIGNATURE_HEADER: signature_header(config.secret_value(), body),
    }
    try:
        async with httpx.AsyncClient(timeout=config.timeout_seconds) as client:
            response = await client.post(config.url, content=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise UnknownOutcome(f"crm callback timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise Transient(f"crm callback not sent ({type(exc).__name__})") from None
    _classify(response)
    return f"crm callback delivered (HTTP {response.status_code})"


def _classify(response: httpx.Response) -> None:
    code = response.status_code
    if code < 300:
        return
    if code in (401, 403):
        raise AuthFailed(f"crm callback refused credentials (HTTP {code})", status_code=code)
    if code in (408, 425, 429) or code >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise Transient(f"crm callback HTTP {code}", retry_after=retry_after, status_code=code)
    raise Permanent(f"crm callback refused (HTTP {code})", status_code=code)


def _register_operation() -> None:
    from hub.services.dispatch import register_operation

    register_operation(CRM_CALLBACK, deliver, department=CRM_CALLBACK)


_register_operation()  # any process that loads the plugins can deliver callbacks
