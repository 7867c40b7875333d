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

Per-call overhead is trimmed where httpx and httpx-aiohttp do work the hub never needs
(measured with benchmarks/dispatch.py; see the decision record): relative URLs are merged
with the base URL once, not on every call; the cookie jar is only consulted when an answer
sets a cookie; headers go to aiohttp as plain pairs; small answers are read in one piece.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

TRANSPORT_ENV = "HUB_HTTP_TRANSPORT"  # "aiohttp" (default) or "httpx"

# Answers up to this size (by Content-Length) are read inside the transport in one piece;
# larger or unsized ones stream as before.
READ_AT_ONCE_MAX = 1 << 20


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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._timeouts: dict[tuple, aiohttp.ClientTimeout] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._send(request)
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
            precise = _precise(cause or exc, request)
            if precise is None:
                raise
            raise precise from exc

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The parent's request path (no proxy, SNI or unix socket: the hub sets none),
        without its per-call header decoding and chunked reading of small answers."""
        if self.proxy or self.uds or request.extensions.get("sni_hostname"):
            return await super().handle_async_request(request)
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        data: Any
        try:
            data = request.content or None
        except httpx.RequestNotRead:  # a streamed upload: aiohttp does the framing
            data = request.stream
            request.headers.pop("transfer-encoding", None)
        encoding = request.headers.encoding
        headers = [(k.decode(encoding), v.decode(encoding)) for k, v in request.headers.raw]
        response = await self.client.request(
            method=request.method,
            url=str(request.url),
            headers=headers,
            data=data,
            allow_redirects=False,
            auto_decompress=False,
            compress=False,
            timeout=self._timeout(request.extensions.get("timeout", {})),
        ).__aenter__()
        stream: httpx.AsyncByteStream
        length = response.content_length
        if length is not None and length <= READ_AT_ONCE_MAX:
            try:
                stream = httpx.ByteStream(await response.read())
            finally:
                response.release()
        else:
            stream = AiohttpResponseStream(response)
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=stream,
            request=request,
            extensions=extensions,
        )

    def _timeout(self, timeout: dict[str, float | None]) -> aiohttp.ClientTimeout:
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        cached = self._timeouts.get(key)
        if cached is None:
            cached = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
            self._timeouts[key] = cached
        return cached


class _LazyCookies(httpx.Cookies):
    """The cookie jar, consulted only when an answer sets a cookie: http.cookiejar's
    extraction costs a fifth of a department call and almost no department sets one."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if any(key.lower() == b"set-cookie" for key, _ in response.headers.raw):
            super().extract_cookies(response)


class HubAsyncClient(httpx.AsyncClient):
    """httpx.AsyncClient that merges each relative URL with the base URL once, and the
    client's headers with each set of per-request headers once: adapters call a handful
    of fixed paths with fixed headers, and httpx re-parses and re-merges them every time."""

    _MERGED_MAX = 512

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = _LazyCookies(self._cookies)
        self._merged: dict[str, httpx.URL] = {}
        self._merged_base = self.base_url
        self._merged_headers: dict[tuple, httpx.Headers] = {}

    def _merge_headers(self, headers: Any = None) -> httpx.Headers:
        """httpx's merge (per-request headers override the client's), built once per
        (client headers, request headers) and copied for each request, which changes its
        own (Host, Content-Length). Only plain dicts or no headers are remembered."""
        if headers is not None and type(headers) is not dict:
            return super()._merge_headers(headers)
        try:
            key = (tuple(self.headers.raw), tuple(headers.items()) if headers else ())
            merged = self._merged_headers.get(key)
        except TypeError:  # an unhashable value: httpx decides what to make of it
            return super()._merge_headers(headers)
        if merged is None:
            merged = super()._merge_headers(headers)
            if len(self._merged_headers) < self._MERGED_MAX:
                self._merged_headers[key] = merged
        return httpx.Headers(merged)

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        if not isinstance(url, str):
            return super()._merge_url(url)
        if self._merged_base is not self.base_url:  # base_url was reassigned
            self._merged, self._merged_base = {}, self.base_url
        merged = self._merged.get(url)
        if merged is None:
            merged = super()._merge_url(url)
            if len(self._merged) < self._MERGED_MAX:
                self._merged[url] = merged
        return merged


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
    return HubAsyncClient(
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
        try:
            return await request()
        except NOT_SENT as first:  # the retry machinery is built only when it is needed
            return await _retry_not_sent(request, first)
    except NOT_SENT as exc:
        reason = f"{label}: not reachable ({type(exc).__name__})"
        raise Transient(reason, not_applied=True) from None
    except SENT_MAYBE_APPLIED as exc:
        reason = f"{label}: answer lost ({type(exc).__name__})"
        raise (Transient(reason) if idempotent else UnknownOutcome(reason)) from None
    except httpx.HTTPError as exc:
        reason = f"{label}: transport error ({type(exc).__name__})"
        raise (Transient(reason) if idempotent else UnknownOutcome(reason)) from None


async def _retry_not_sent(
    request: Callable[[], Awaitable[httpx.Response]], first: BaseException
) -> httpx.Response:
    """Tenacity's loop with the failed first attempt replayed as its attempt 1, so the
    wait before attempt 2 and the attempt budget are the same as if it had run it."""
    failed: BaseException | None = first
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(IN_CALL_ATTEMPTS),
        wait=wait_random_exponential(multiplier=0.05, max=0.5),
        retry=retry_if_exception_type(NOT_SENT),
        reraise=True,
    ):
        with attempt:
            if failed is not None:
                exc, failed = failed, None
                raise exc
            return await request()
    raise AssertionError("unreachable")  # pragma: no cover
