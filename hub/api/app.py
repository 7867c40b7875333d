"""The HTTP front door: Open311 GeoReport v2 at /open311/v2/, plus /health and /ready.

`create_app(hub)` builds the FastAPI app; `hub serve` runs it with uvicorn.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.api import errors
from hub.api.auth import ApiKeyChecker
from hub.api.batcher import IntakeBatcher
from hub.api.open311 import FORMATS, PREFIX, ApiState, create_request
from hub.api.open311 import router as open311_router
from hub.model import utcnow
from hub.observability.http import install as install_observability
from hub.services.apikeys import ApiKeyService
from hub.services.intake import IntakeService
from hub.services.runtime import Hub

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
JURISDICTION_ENV = "HUB_JURISDICTION_ID"


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` before anything parses them (413, Open311 form).

    Content-Length is checked up front; a chunked body is counted as it streams.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status = 413 if declared.isdigit() else 400
            errs = [
                {
                    "code": status,
                    "description": f"request body larger than {self.max_bytes} bytes"
                    if status == 413
                    else "bad Content-Length",
                }
            ]
            response = errors.error_response(scope["path"], status, errs)
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


class IntakeFastPath:
    """POST /open311/v2/requests.{json,xml} straight to its endpoint, past FastAPI's route
    matching, parameter solving and exit stacks (a third of the request's CPU). The route
    stays declared (OpenAPI) and runs the same function; errors get the same Open311
    answers as through the exception handlers, and the route template labels the metrics.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths = {f"{PREFIX}/requests.{fmt}": fmt for fmt in FORMATS}
        template = f"{PREFIX}/requests.{{fmt}}"
        self.route = next(
            r
            for r in open311_router.routes
            if getattr(r, "path", None) == template and "POST" in getattr(r, "methods", ())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fmt = self.paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        if fmt is None or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        scope["path_params"] = {"fmt": fmt}
        try:
            response = await create_request(Request(scope, receive, send))
        except errors.Open311Error as exc:
            response = errors.error_response(scope["path"], exc.status, exc.errors)
        except StarletteHTTPException as exc:
            response = errors.http_error_response(scope["path"], exc)
        await response(scope, receive, send)


def _ready_checks(hub: Hub) -> dict[str, Any]:
    from alembic.runtime.migration import MigrationContext

    from hub.store.migrate import head_revision

    checks: dict[str, Any] = {}
    try:
        with hub.engine.connect() as conn:
            conn.execute(text("select 1"))
            current = MigrationContext.configure(conn).get_current_revision()
        checks["database"] = "ok"
        head = head_revision()
        checks["migrations"] = "ok" if current == head else f"at {current}, head is {head}"
    except Exception as exc:  # readiness reports, it does not raise
        checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    try:
        checks["mappings"] = "ok" if hub.mappings.catalogue else "empty catalogue"
    except Exception as exc:
        checks["mappings"] = f"failed to load: {type(exc).__name__}: {exc}"
    return checks


def _extra_routers(app: FastAPI) -> None:
    """Routers of other features living on the same app (e.g. status-sync webhooks)."""
    for name in ("hub.api.payments", "hub.api.webhooks"):  # payments before /webhooks/{dept}
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        router = getattr(module, "router", None)
        if router is not None:
            app.include_router(router)


def create_app(hub: Hub | None = None, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    owned = hub is None
    hub = hub or Hub.from_environment()
    state = ApiState(
        hub=hub,
        keys=ApiKeyChecker(ApiKeyService(hub.engine, read_engine=hub.read_engine)),
        batcher=IntakeBatcher(IntakeService(hub)),
        jurisdiction_id=os.environ.get(JURISDICTION_ENV) or None,
        changeset=utcnow(),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await state.batcher.aclose()
        if owned:
            await hub.aclose()
            hub.dispose()

    app = FastAPI(
        title="Department integration hub",
        description="Open311 GeoReport v2 front door (with mySociety servicerequestupdates).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.open311 = state
    app.state.hub = hub
    errors.install(app)
    app.add_middleware(IntakeFastPath)  # inside the body limit and observability
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.include_router(open311_router)
    _extra_routers(app)
    install_observability(app, hub)  # /metrics, X-Request-ID, request metrics

    @app.get("/health", tags=["operations"], summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], summary="Readiness: DB, migrations, mappings")
    async def ready() -> JSONResponse:
        checks = await asyncio.wait_for(run_in_threadpool(_ready_checks, hub), timeout=10)
        ok = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    return app
