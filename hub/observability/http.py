"""The API's share of observability: request ids, request metrics and `GET /metrics`."""

from __future__ import annotations

import logging
import re
import uuid
from time import perf_counter
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.observability.logging import bind, unbind
from hub.observability.metrics import hub_registry, record_http, render

if TYPE_CHECKING:
    from hub.services.runtime import Hub

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is echoed into every log line: only short, plain tokens are taken as-is.
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _SANE_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def route_of(scope: Scope) -> str:
    """The route template (/open311/v2/requests/{id}.{fmt}), never the raw path: bounded
    label cardinality, and no ids or tokens in metric labels."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"


class ObservabilityMiddleware:
    """Binds the request id for the request's logs, returns it as X-Request-ID, and
    counts the request by route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        token = bind(request_id=request_id)
        started, status = perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = perf_counter() - started
            route = route_of(scope)
            record_http(scope["method"], route, status, seconds)
            log.debug(
                "request served",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
            unbind(token)


def install(app: FastAPI, hub: Hub) -> None:
    """Add the middleware (outermost, so it sees 413s and errors too) and /metrics."""
    registry = hub_registry(hub)
    app.add_middleware(ObservabilityMiddleware)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        body, content_type = await run_in_threadpool(render, registry)
        return Response(body, media_type=content_type)


__all__ = ["ObservabilityMiddleware", "install", "request_id_from", "route_of"]
