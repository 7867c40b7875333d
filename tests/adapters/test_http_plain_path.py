"""HubAsyncClient builds and sends plain calls (bytes to a path, no auth, no redirects
followed, no hooks) its own shorter way. Everything a caller can see must be what httpx's
own path gives: the client here is compared call by call with a stock httpx.AsyncClient
over the same transport, against a loopback server."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from aiohttp import web

from hub.transports.http import HubAiohttpTransport, make_async_client
from tests.adapters.loopback import aiohttp_loopback

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BIG = b"x" * (2 << 20)  # over the transport's read-at-once limit: streamed


async def echo(request: web.Request) -> web.Response:
    seen = {
        "method": request.method,
        "headers": [[k.lower(), v] for k, v in request.headers.items()],
        "body": (await request.read()).decode(),
    }
    return web.json_response(seen)


async def redirect(_: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/svc/echo"})


async def gzipped(_: web.Request) -> web.Response:
    body = gzip.compress(b'{"zipped": true}')
    return web.Response(body=body, headers={"Content-Encoding": "gzip"})


async def cookie(_: web.Request) -> web.Response:
    response = web.json_response({"ok": 1})
    response.set_cookie("session", "s-1")
    return response


async def big(_: web.Request) -> web.Response:
    return web.Response(body=BIG)


async def refused(_: web.Request) -> web.Response:
    return web.json_response({"error": "nope"}, status=503, headers={"Retry-After": "7"})


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in {
        "/svc/echo": echo,
        "/svc/redirect": redirect,
        "/svc/gzip": gzipped,
        "/svc/cookie": cookie,
        "/svc/big": big,
        "/svc/refused": refused,
    }.items():
        app.router.add_route("*", path, handler)
    async with aiohttp_loopback(app) as url:
        yield url


def stock_client(base_url: str, **kwargs) -> httpx.AsyncClient:
    """httpx's own client over the hub's transport: the reference behaviour."""
    return httpx.AsyncClient(
        base_url=base_url,
        transport=HubAiohttpTransport(),
        timeout=httpx.Timeout(10.0, connect=5.0),  # make_async_client's default
        **kwargs,
    )


class GeneratorSpy:
    """Counts the calls that went through httpx's auth/redirect generators."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = httpx.AsyncClient._send_handling_auth

        async def spied(client, *args, **kwargs):
            self.calls += 1
            return await original(client, *args, **kwargs)

        monkeypatch.setattr(httpx.AsyncClient, "_send_handling_auth", spied)


def visible(response: httpx.Response) -> dict:
    """What a caller of the client can see of one call (the Date header aside)."""
    request = response.request
    return {
        "status": response.status_code,
        "headers": [(k, v) for k, v in response.headers.raw if k.lower() != b"date"],
        "content": response.content,
        "http_version": response.http_version,
        "reason": response.reason_phrase,
        "encoding": response.encoding,
        "closed": response.is_closed,
        "consumed": response.is_stream_consumed,
        "downloaded": response.num_bytes_downloaded,
        "next_request": response.next_request and str(response.next_request.url),
        "history": [r.status_code for r in response.history],
        "request": (request.method, str(request.url), request.headers.raw, request.content),
        "request_extensions": request.extensions,
    }


CALLS = [
    pytest.param("POST", "/echo", {"content": b"data=%7B%7D&token=t", "headers": FORM}, id="form"),
    pytest.param("POST", "/echo", {"content": b"a=b"}, id="no-headers"),
    pytest.param("PUT", "/echo", {"content": b"{}", "headers": {"X-Trace": "t"}}, id="put"),
    pytest.param("GET", "/echo", {}, id="get"),
    pytest.param("POST", "/echo", {"json": {"a": 1}}, id="json"),
    pytest.param("POST", "/echo", {"data": {"a": "1"}}, id="data"),
    pytest.param("POST", "/echo", {"content": b"a", "params": {"q": "1"}}, id="params"),
    pytest.param("POST", "/echo", {"content": b"a", "timeout": 3.0}, id="timeout"),
    pytest.param("POST", "/echo", {"content": b"a", "headers": {"Content-Length": "1"}}, id="cl"),
    pytest.param("POST", "/redirect", {"content": b"a"}, id="redirect-not-followed"),
    pytest.param("POST", "/gzip", {"content": b"a"}, id="gzip"),
    pytest.param("POST", "/cookie", {"content": b"a"}, id="set-cookie"),
    pytest.param("POST", "/big", {"content": b"a"}, id="streamed-answer"),
    pytest.param("POST", "/refused", {"content": b"a", "headers": FORM}, id="503"),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), CALLS)
async def test_a_call_looks_exactly_as_httpx_makes_it(
    server: str, method: str, path: str, kwargs: dict
) -> None:
    async with (
        make_async_client(base_url=server, headers={"X-Api": "k"}) as hub,
        stock_client(server, headers={"X-Api": "k"}) as stock,
    ):
        for _ in range(2):  # the second time from the remembered template
            ours = await hub.request(method, path, **kwargs)
            theirs = await stock.request(method, path, **kwargs)
            assert visible(ours) == visible(theirs)
            assert ours.elapsed.total_seconds() > 0
        assert dict(hub.cookies) == dict(stock.cookies)


async def test_plain_calls_skip_httpx_generators_and_the_rest_do_not(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = GeneratorSpy(monkeypatch)
    async with make_async_client(base_url=server) as client:
        await client.post("/echo", content=b"a=b", headers=FORM)
        await client.get("/echo")
        assert spy.calls == 0
        followed = await client.post("/redirect", content=b"a", follow_redirects=True)
        assert followed.status_code == 200 and [r.status_code for r in followed.history] == [302]
        assert followed.json()["method"] == "GET"  # httpx's redirect rule for 302
        authed = await client.post("/echo", content=b"a", auth=("user", "secret"))
        assert ["authorization", "Basic dXNlcjpzZWNyZXQ="] in authed.json()["headers"]
        async with client.stream("POST", "/big", content=b"a") as streamed:
            assert len(await streamed.aread()) == len(BIG)
    assert spy.calls == 3  # the redirect, the auth and the stream took httpx's path


async def test_event_hooks_and_client_auth_take_httpx_path(server: str) -> None:
    seen: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        seen.append(f"request {request.url.path}")

    async def on_response(response: httpx.Response) -> None:
        seen.append(f"response {response.status_code}")

    hooks = {"request": [on_request], "response": [on_response]}
    async with make_async_client(base_url=server, event_hooks=hooks) as client:
        await client.post("/echo", content=b"a")
    assert seen == ["request /svc/echo", "response 200"]
    async with make_async_client(base_url=server, auth=("u", "p")) as client:
        answer = (await client.post("/echo", content=b"a")).json()
    assert ["authorization", "Basic dTpw"] in answer["headers"]


async def test_transport_errors_carry_their_request(unused_tcp_port: int) -> None:
    async with make_async_client(base_url=f"http://127.0.0.1:{unused_tcp_port}") as client:
        with pytest.raises(httpx.ConnectError) as raised:
            await client.post("/x", content=b"a=b", headers=FORM)
    assert raised.value.request.url.path == "/x" and raised.value.request.content == b"a=b"


async def test_a_closed_client_refuses_like_httpx() -> None:
    client = make_async_client(base_url="http://127.0.0.1:9")
    await client.aclose()
    with pytest.raises(RuntimeError, match="client has been closed"):
        await client.post("/x", content=b"a")


async def test_respx_sees_the_plain_request() -> None:
    base = "http://dept.invalid/api"
    with respx.mock(using="httpx", base_url=base) as mock:
        route = mock.post("/create").mock(
            return_value=httpx.Response(201, json={"ok": 1}, headers={"Set-Cookie": "a=b"})
        )
        async with make_async_client(base_url=base) as client:
            response = await client.post("/create", content=b"data=1", headers=FORM)
            assert (response.status_code, response.json()) == (201, {"ok": 1})
            assert response.is_closed and response.elapsed.total_seconds() >= 0
            assert client.cookies.get("a") == "b"
    sent = route.calls.last.request
    assert sent.content == b"data=1" and sent.headers["content-length"] == "6"
    assert sent.headers["host"] == "dept.invalid"
    assert json.loads(response.content) == {"ok": 1}
