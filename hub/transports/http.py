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
sets a cookie; headers go to aiohttp as plain pairs; small answers are read in one piece;
a plain call (bytes to a path; no auth, redirect following or hooks) is built from a
template and sent without httpx's auth and redirect generators. The last leans on httpx
internals (``BoundAsyncStream``, ``ClientState``, ``Response._content``); the tests in
tests/adapters/test_http_plain_path.py compare every visible detail with httpx's own path,
so an httpx release that changes them fails there first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from time import perf_counter
from typing import Any

import aiohttp
import httpx
from httpx._client import BoundAsyncStream, ClientState
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

TRANSPORT_ENV = "HUB_HTTP_TRANSPORT"  # "aiohttp" (default) or "httpx"

# httpx logs every request at INFO on this logger; the plain send keeps that line.
httpx_log = logging.getLogger("httpx")

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
    """httpx.AsyncClient shortened for the calls adapters make: a handful of fixed paths
    with fixed headers and a body of bytes, no auth flow, no redirects, no event hooks.

    - Each relative URL is merged with the base URL once, and the client's headers with
      each set of per-request headers once (httpx re-parses and re-merges them every time).
    - Such a request is built from a template of its URL and headers (Host included), so
      httpx does not re-encode the body and re-derive its headers on every call.
    - Such a request is sent without httpx's auth and redirect generators, and an answer
      the transport read whole is read synchronously instead of through async iterators.
    Anything else (auth, redirects followed, hooks, streaming, data=/json=/files=) takes
    httpx's own path unchanged. What the caller sees is what httpx gives: the same request
    headers in the same order, the same response (elapsed, next_request, cookies, the
    httpx log line), the same errors; respx still intercepts (``_transport_for_url``).
    """

    _MERGED_MAX = 512

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = _LazyCookies(self._cookies)
        self._merged: dict[str, httpx.URL] = {}
        self._merged_base = self.base_url
        self._merged_headers: dict[tuple, httpx.Headers] = {}
        self._templates: dict[tuple, tuple[httpx.URL, httpx.Headers] | None] = {}
        self._timeout_extension: tuple[httpx.Timeout, dict[str, float | None]] | None = None

    def build_request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> httpx.Request:
        template = None
        if (
            type(content) is bytes
            and content
            and type(url) is str
            and data is None
            and files is None
            and json is None
            and params is None
            and cookies is None
            and extensions is None
            and timeout is httpx.USE_CLIENT_DEFAULT
        ):
            template = self._template(url, headers)
        if template is None:
            return super().build_request(
                method,
                url,
                content=content,
                data=data,
                files=files,
                json=json,
                params=params,
                headers=headers,
                cookies=cookies,
                timeout=timeout,
                extensions=extensions,
            )
        target, template_headers = template
        request = httpx.Request(
            method,
            target,
            headers=template_headers,
            stream=httpx.ByteStream(content),
            extensions={"timeout": self._timeout_dict()},
        )
        # httpx's own order: Host, the merged headers, then Content-Length.
        request.headers["Content-Length"] = str(len(content))
        request.read()
        return request

    def _template(self, url: str, headers: Any) -> tuple[httpx.URL, httpx.Headers] | None:
        """The URL and the headers (Host first) of a plain request; None when httpx must
        build it (client params or cookies, a Content-Length or Host of the caller's)."""
        if self.params or self.cookies or (headers is not None and type(headers) is not dict):
            return None
        try:
            key = (url, self.base_url, tuple(self.headers.raw), tuple((headers or {}).items()))
            template = self._templates[key]
        except TypeError:  # an unhashable header value
            return None
        except KeyError:
            template = self._new_template(url, headers)
            if len(self._templates) < self._MERGED_MAX:
                self._templates[key] = template
        return template

    def _new_template(self, url: str, headers: Any) -> tuple[httpx.URL, httpx.Headers] | None:
        target = self._merge_url(url)
        merged = self._merge_headers(headers)
        caller_framed = any(h in merged for h in ("host", "content-length", "transfer-encoding"))
        if not target.host or caller_framed:
            return None
        return target, httpx.Headers([(b"Host", target.netloc), *merged.raw])

    def _timeout_dict(self) -> dict[str, float | None]:
        cached = self._timeout_extension
        if cached is None or cached[0] is not self.timeout:
            cached = self._timeout_extension = (self.timeout, self.timeout.as_dict())
        return cached[1]

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        if stream or not self._sends_plainly(request, auth, follow_redirects):
            return await super().send(
                request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        self._state = ClientState.OPENED
        self._set_timeout(request)
        transport = self._transport_for_url(request.url)
        started = perf_counter()
        try:
            response = await transport.handle_async_request(request)
        except httpx.RequestError as exc:
            exc.request = request
            raise
        response.request = request
        try:
            await self._finish(response, started)
        except BaseException:
            await response.aclose()
            raise
        return response

    def _sends_plainly(self, request: httpx.Request, auth: Any, follow_redirects: Any) -> bool:
        """No auth flow, no redirect followed, no hook: httpx's generators would only
        pass the one request and its answer through."""
        if follow_redirects is httpx.USE_CLIENT_DEFAULT:
            follow_redirects = self.follow_redirects
        hooks = self.event_hooks
        return (
            self._state is not ClientState.CLOSED
            and auth is httpx.USE_CLIENT_DEFAULT
            and self.auth is None
            and not follow_redirects
            and not hooks["request"]
            and not hooks["response"]
            and not request.url.userinfo
        )

    async def _finish(self, response: httpx.Response, started: float) -> None:
        """What httpx does with an answer it does not follow: the redirect it would
        follow, cookies, encoding, its log line, then the body read."""
        request = response.request
        if response.has_redirect_location:
            response.next_request = self._build_redirect_request(request, response)
        self.cookies.extract_cookies(response)
        response.default_encoding = self._default_encoding
        httpx_log.info(
            'HTTP Request: %s %s "%s %d %s"',
            request.method,
            request.url,
            response.http_version,
            response.status_code,
            response.reason_phrase,
        )
        if isinstance(response.stream, httpx.ByteStream):  # the transport read it whole
            response.elapsed = timedelta(seconds=perf_counter() - started)
            if "content-encoding" in response.headers:
                response.read()  # httpx decodes it
            else:  # what read() ends with, without its chunker and decoder generators
                body = b"".join(response.stream)
                response._content = body
                response._num_bytes_downloaded = len(body)
                response.is_stream_consumed = response.is_closed = True
        else:
            response.stream = BoundAsyncStream(response.stream, response=response, start=started)
            await response.aread()

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
