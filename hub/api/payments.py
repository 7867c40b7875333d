"""``POST /webhooks/payments``: signed payment notifications (Stripe-style).

Verification and queuing live in :mod:`adapters.payments.plugin`; this is the HTTP shell.
The raw body is read before anything parses it (the signature covers the exact bytes).
Answers: 200 ``{"accepted": true}`` (queued) or ``{"duplicate": true}`` (this event id was
seen: nothing changes), 401 forged/stale/unsigned, 400 unreadable, 404 no payments service.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Stripe-Signature"


router = APIRouter(tags=["payments"])


@router.post("/webhooks/payments", summary="Payment notification (Stripe-Signature)")
async def payment_webhook(request: Request) -> JSONResponse:
    from adapters.payments.plugin import WebhookRefused, receive_webhook

    body = await request.body()
    header = request.headers.get(SIGNATURE_HEADER)
    try:
        result = await run_in_threadpool(receive_webhook, request.app.state.hub, body, header)
    except WebhookRefused as exc:
        log.warning("payment webhook refused (%s): %s", exc.status, exc.message)
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    return JSONResponse({"ok": True, **result})
