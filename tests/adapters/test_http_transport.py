"""The hub's HTTP client over a real local aiohttp server: the trimmed request path keeps
httpx's behaviour (bodies, headers, cookies, streamed answers, error classes)."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web

from adapters.publicworks.client import form_encode
from hub.adapters import Transient, UnknownOutcome
from hub.transports.http import make_async_client, send_classified
from tests.adapters.loopback import aiohttp_loopback


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {"body": body.decode(), "type": request.headers.get("content-type"), "path": request.path}
    )


async def cookie(_: web.Request) -> web.Response:
    response = web.Response(text="ok")
    response.set_cookie("session", "abc")
    return response


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for part in (b"one,", b"two,", b"three"):
        await response.write(part)
    await response.write_eof()
    return response


async def hang_up(request: web.Request) -> web.Response:
    await request.read()
    request.transport.close()  # the request arrived; the answer never does
    return web.Response(text="never")


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/svc/echo", echo)
    app.router.add_get("/svc/cookie", cookie)
    app.router.add_get("/svc/chunked", chunked)
    app.router.add_post("/svc/hang-up", hang_up)
    async with aiohttp_loopback(app) as url:
        yield url


def test_form_encode_is_urlencode() -> None:
    rng = random.Random(7)
    for _ in range(500):
        text = "".join(chr(rng.randrange(0, 128)) for _ in range(rng.randrange(60)))
        wide = "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(5)))
        for form in ({"data": text, "token": text[::-1]}, {"data": text + wide}):
            assert form_encode(form) == urlencode(form).encode()


async def test_relative_paths_body_and_headers_reach_the_server(server: str) -> None:
    async with make_async_client(base_url=server) as client:
        for _ in range(2):  # the second call uses the merged URL cached by the first
            response = await client.post(
                "/echo",
                content=form_encode({"data": '{"a": 1}'}),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert response.json() == {
                "body": "data=%7B%22a%22%3A+1%7D",
                "type": "application/x-www-form-urlencoded",
                "path": "/svc/echo",
            }
        assert response.elapsed.total_seconds() >= 0  # read and closed like any response


async def test_cookies_are_still_kept_when_a_server_sets_one(server: str) -> None:
    async with make_async_client(base_url=server) as client:
        await client.post("/echo", content=b"x")
        assert not client.cookies
        await client.get("/cookie")
        assert client.cookies.get("session") == "abc"


async def test_unsized_answers_still_stream(server: str) -> None:
    async with make_async_client(base_url=server) as client:
        assert (await client.get("/chunked")).content == b"one,two,three"


async def test_refused_connection_is_not_sent_and_retried(server: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        calls = 0
        async with make_async_client(base_url=f"http://127.0.0.1:{port}") as client:

            async def request() -> httpx.Response:
                nonlocal calls
                calls += 1
                return await client.post("/x", content=b"x")

            with pytest.raises(Transient, match="not reachable"):
                await send_classified(request, label="t", idempotent=False)
    assert calls == 3  # tenacity's in-call retries, built only after the first failure


async def test_answer_lost_after_sending_is_unknown_outcome(server: str) -> None:
    calls = 0
    async with make_async_client(base_url=server) as client:

        async def request() -> httpx.Response:
            nonlocal calls
            calls += 1
            return await client.post("/hang-up", content=b"x")

        with pytest.raises(UnknownOutcome):
            await send_classified(request, label="t", idempotent=False)
    assert calls == 1  # never blindly resent
