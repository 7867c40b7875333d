"""HubAsyncClient merges its headers with each set of per-request headers once: requests
must carry exactly what httpx's own merge gives, over the wire and under respx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from aiohttp import web

from hub.transports.http import make_async_client
from tests.adapters.loopback import aiohttp_loopback

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def headers_echo(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response([[k.lower(), v] for k, v in request.headers.items()])


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/svc/headers", headers_echo)
    async with aiohttp_loopback(app) as url:
        yield url


def stock_merge(client: httpx.AsyncClient, headers) -> list[tuple[bytes, bytes]]:
    return httpx.AsyncClient._merge_headers(client, headers).raw


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        FORM,
        {"accept": "application/json", "X-Trace": "t-1"},  # overrides a default, any case
        [("X-Dup", "1"), ("X-Dup", "2")],  # not a dict: merged by httpx itself
        httpx.Headers({"User-Agent": "hub-test"}),
    ],
)
def test_merged_headers_are_httpx_own(headers) -> None:
    client = make_async_client(base_url="http://127.0.0.1:9", headers={"X-Api": "k"})
    for _ in range(2):  # the second time from the remembered merge
        assert client._merge_headers(headers).raw == stock_merge(client, headers)
        request = client.build_request("POST", "/x", content=b"a=b", headers=headers)
        expected = httpx.Request(
            "POST",
            "http://127.0.0.1:9/x",
            content=b"a=b",
            headers=httpx.AsyncClient._merge_headers(client, headers),
        )
        assert request.headers.raw == expected.headers.raw


def test_each_request_gets_its_own_headers() -> None:
    client = make_async_client(base_url="http://127.0.0.1:9")
    first = client.build_request("POST", "/x", content=b"abc", headers=FORM)
    first.headers["X-Changed"] = "yes"
    second = client.build_request("POST", "/x", content=b"abcdef", headers=FORM)
    assert "X-Changed" not in second.headers
    assert (first.headers["Content-Length"], second.headers["Content-Length"]) == ("3", "6")
    merged = client._merge_headers(FORM)  # the remembered merge is handed out as a copy
    merged["X-Changed"] = "yes"
    assert "X-Changed" not in client._merge_headers(FORM)


def test_changed_client_headers_are_followed() -> None:
    client = make_async_client(base_url="http://127.0.0.1:9")
    assert "x-api" not in client.build_request("GET", "/x", headers=FORM).headers
    client.headers["X-Api"] = "k1"  # changed in place
    assert client.build_request("GET", "/x", headers=FORM).headers["x-api"] == "k1"
    client.headers = {"X-Api": "k2", "User-Agent": "hub"}  # replaced
    merged = client.build_request("GET", "/x", headers=FORM).headers
    assert (merged["x-api"], merged["user-agent"]) == ("k2", "hub")


async def test_headers_over_the_wire(server: str) -> None:
    async with make_async_client(base_url=server, headers={"Accept": "text/plain"}) as client:
        for accept in ("application/json", "text/csv", "application/json"):
            response = await client.post(
                "/headers", content=b"a=b", headers={**FORM, "accept": accept}
            )
            seen = response.json()
            assert [v for k, v in seen if k == "accept"] == [accept]  # overridden, once
            assert ["content-type", FORM["Content-Type"]] in seen
        response = await client.post("/headers", content=b"a=b")
        assert [v for k, v in response.json() if k == "accept"] == ["text/plain"]


async def test_respx_still_intercepts() -> None:
    base = "http://dept.invalid/api"
    client = make_async_client(base_url=base, headers={"X-Api": "k"})
    with respx.mock(using="httpx", base_url=base) as mock:
        route = mock.post("/create").mock(return_value=httpx.Response(200, json={"ok": 1}))
        for _ in range(2):
            response = await client.post("/create", content=b"a=b", headers=FORM)
            assert response.json() == {"ok": 1}
        sent = route.calls.last.request
        assert (sent.headers["x-api"], sent.headers["content-type"]) == ("k", FORM["Content-Type"])
        assert route.call_count == 2
    await client.aclose()
