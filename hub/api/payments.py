"""``POST /webhooks/payments``: signed payment notifications (Stripe-style).

Verification and queuing live in :mod:`adapters.payments.plugin`; this is the HTTP shell.
The raw body is read before anything parses it (the signature covers the exact bytes).
Answers: 200 ``{"accepted": true}`` (queued) or ``{"duplicate": true}`` (this event id was
seen: nothing changes), 401 forged/stale/unsigned, 400 unreadable, 404 no payments service.

The router's lifespan binds the app's hub to the plugins that need one in their hooks
(the GIS and payment gates run inside intake, where hooks get no hub handle).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Stripe-Signature"


@asynccontextmanager
async def _bind_plugins(app: FastAPI) -> AsyncIterator[None]:
    hub = getattr(app.state, "hub", None)
    if hub is not None:
        for plugin in hub.pm.get_plugins():
            bind = getattr(plugin, "bind", None)
            if callable(bind):
                bind(hub)
    yield


router = APIRouter(tags=["payments"], lifespan=_bind_plugins)


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
