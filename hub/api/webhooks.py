"""`POST /webhooks/{department}`: signed department status notifications.

Verification, parsing and applying live in :mod:`hub.services.webhooks`; this is the HTTP
shell. The raw body is read before anything parses it, because the signature covers the
exact bytes. Answers: 200 with the sync counts, 401 for a bad/missing/stale signature,
400 for an unreadable body, 404 for an unknown department.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hub.services.runtime import Hub
from hub.services.webhooks import SIGNATURE_HEADER, WebhookRejected, WebhookService

log = logging.getLogger(__name__)

router = APIRouter(tags=["status sync"])


def _service(request: Request) -> WebhookService:
    state = request.app.state
    service = getattr(state, "webhooks", None)
    if service is None:
        hub: Hub = state.hub
        service = state.webhooks = WebhookService(hub)
    return service


@router.post("/webhooks/{department}", summary="Department status notification (HMAC-signed)")
async def receive_webhook(department: str, request: Request) -> JSONResponse:
    body = await request.body()
    try:
        result = await _service(request).receive(
            department,
            body,
            request.headers.get(SIGNATURE_HEADER),
            content_type=request.headers.get("content-type"),
        )
    except WebhookRejected as exc:
        # Logged without the body or header: neither belongs in logs.
        log.warning("webhook for %s refused (%s): %s", department, exc.status, exc.message)
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    return JSONResponse({"ok": True, **result.as_dict()})
