"""Open311 errors: every failure, ours or the framework's, becomes `[{code, description}]`.

The format follows the URL suffix (`.xml` → `<errors><error>…`), so a client gets errors
in the format it asked for, even for 404/405/413 raised before any route runs.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from hub.api import xml

log = logging.getLogger(__name__)

JSON_TYPE = "application/json; charset=utf-8"
XML_TYPE = "text/xml; charset=utf-8"


class Open311Error(Exception):
    """An API error with its HTTP status and one or more Open311 error entries."""

    def __init__(self, status: int, *descriptions: str, code: int | None = None) -> None:
        super().__init__("; ".join(descriptions))
        self.status = status
        self.errors = [{"code": code or status, "description": d} for d in descriptions]


def bad_request(*descriptions: str) -> Open311Error:
    return Open311Error(400, *descriptions)


def not_found(description: str) -> Open311Error:
    return Open311Error(404, description)


def wants_xml(path: str) -> bool:
    return path.endswith(".xml")


def error_response(
    path: str, status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> Response:
    if wants_xml(path):
        return Response(xml.render("errors", errors), status, headers, media_type=XML_TYPE)
    return Response(json.dumps(errors), status, headers, media_type=JSON_TYPE)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
        errors.append({"code": 400, "description": f"{where}: {error.get('msg', 'invalid')}"})
    return errors or [{"code": 400, "description": "invalid request"}]


_REASONS = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
}


def http_error_response(path: str, exc: StarletteHTTPException) -> Response:
    detail = exc.detail if isinstance(exc.detail, str) else None
    description = detail or _REASONS.get(exc.status_code, "error")
    if exc.status_code == 404 and description == "Not Found":
        description = f"no resource at {path}"
    return error_response(
        path,
        exc.status_code,
        [{"code": exc.status_code, "description": description}],
        headers=dict(exc.headers or {}),
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the Open311 form."""

    @app.exception_handler(Open311Error)
    async def _open311(request: Request, exc: Open311Error) -> Response:
        return error_response(request.url.path, exc.status, exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI would answer 422 with its own shape; Open311 says 400 with an error list.
        return error_response(request.url.path, 400, _validation_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return http_error_response(request.url.path, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            request.url.path, 500, [{"code": 500, "description": "internal error"}]
        )
