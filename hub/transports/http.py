"""HTTP transport: httpx as the client API, aiohttp underneath for throughput.

httpx's own connection pool collapses under concurrency on this machine class (see
docs/decisions/0003-http-transport.md); the httpx-aiohttp transport keeps the httpx API
(typed, respx-testable with ``respx.mock(using="httpx")``) at aiohttp speed.

The transport also sharpens error mapping, which exactly-once delivery depends on:
- the request never left (connection refused, connect timeout) → httpx.ConnectError /
  httpx.ConnectTimeout: safe to retry at once;
- it may have left (read timeout, server disconnected mid-answer) → httpx.ReadTimeout /
  httpx.RemoteProtocolError: the outcome is unknown.
The stock transport maps both to ConnectTimeout, which would hide an unknown outcome.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

TRANSPORT_ENV = "HUB_HTTP_TRANSPORT"  # "aiohttp" (default) or "httpx"


def _precise(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc) or "connect timeout", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc) or "connection refused", request=request)
    if isinstance(exc, aiohttp.SocketTimeoutError | aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(str(exc) or "read timeout", request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(str(exc) or "server disconnected", request=request)
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx.ReadError(str(exc) or "connection lost", request=request)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout("timeout", request=request)
    return None


class HubAiohttpTransport(AiohttpTransport):
    """AiohttpTransport with error mapping that separates "not sent" from "maybe applied"."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
            precise = _precise(cause or exc, request)
            if precise is None:
                raise
            raise precise from exc


def make_async_client(
    *,
    base_url: str = "",
    timeout: float = 10.0,
    max_connections: int = 256,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """The one place adapters get an HTTP client from."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if transport is None and os.environ.get(TRANSPORT_ENV, "aiohttp") == "aiohttp":
        transport = HubAiohttpTransport(limits=limits)
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=limits,
        headers=headers,
        transport=transport,
        **kwargs,
    )


SENT_MAYBE_APPLIED = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
)
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


IN_CALL_ATTEMPTS = 3  # quick retries only when the request provably never left


async def send_classified(
    request: Callable[[], Awaitable[httpx.Response]],
    *,
    label: str,
    idempotent: bool,
) -> httpx.Response:
    """Send with tenacity's short in-call retries for requests that never left, and turn
    transport failures into the adapter port's classes: not sent → Transient; sent and
    unanswered → UnknownOutcome (or Transient for an idempotent read).

    Raised `from None`: the httpx exception carries the request, whose body may hold a
    password or token; the exception type name is enough to diagnose.
    """
    from hub.adapters import Transient, UnknownOutcome  # ports: the shared error vocabulary

    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(IN_CALL_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.05, max=0.5),
            retry=retry_if_exception_type(NOT_SENT),
            reraise=True,
        ):
            with attempt:
                return await request()
    except NOT_SENT as exc:
        raise Transient(f"{label}: not reachable ({type(exc).__name__})") from None
    except SENT_MAYBE_APPLIED as exc:
        reason = f"{label}: answer lost ({type(exc).__name__})"
        raise (Transient(reason) if idempotent else UnknownOutcome(reason)) from None
    except httpx.HTTPError as exc:
        reason = f"{label}: transport error ({type(exc).__name__})"
        raise (Transient(reason) if idempotent else UnknownOutcome(reason)) from None
    raise AssertionError("unreachable")  # pragma: no cover
