"""Fixtures for the HTTP API: a migrated store, the app, a client and an API key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from hub.api.app import create_app
from hub.config import HubConfig
from hub.services.apikeys import ApiKeyService
from hub.services.runtime import Hub
from hub.testing.generator import find_realworld_dir

REPO = Path(__file__).resolve().parents[2]
BASE = "/open311/v2"


@pytest.fixture(scope="session")
def realworld() -> Path:
    found = find_realworld_dir(Path(__file__).parent)
    assert found is not None and (found / "open311").is_dir(), "shared/realworld not found"
    return found


def make_hub(url: str) -> Hub:
    return Hub(HubConfig(mappings=REPO / "mappings"), database=url)


@pytest.fixture
def hub(sqlite_url: str):
    h = make_hub(sqlite_url)
    yield h
    h.dispose()


@pytest.fixture
def any_hub(db_url: str):
    """The same hub on SQLite and on PostgreSQL."""
    h = make_hub(db_url)
    yield h
    h.dispose()


async def _client(h: Hub) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(h)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as c:
        c.app = app  # type: ignore[attr-defined]
        yield c
    await app.state.open311.batcher.aclose()


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(hub):
        yield c


@pytest.fixture
async def any_client(any_hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(any_hub):
        yield c


@pytest.fixture
def api_key(hub: Hub) -> str:
    return ApiKeyService(hub.engine).create("test-crm")[1]


@pytest.fixture
def any_api_key(any_hub: Hub) -> str:
    return ApiKeyService(any_hub.engine).create("test-crm")[1]


def paths(element: etree._Element, prefix: str = "") -> set[str]:
    """Every element path of a document ('service_requests/request/lat', …)."""
    here = f"{prefix}/{etree.QName(element).localname}" if prefix else element.tag
    found = {here}
    for child in element:
        if isinstance(child.tag, str):
            found |= paths(child, here)
    return found


def reference(realworld: Path, relative: str) -> etree._Element:
    """A real Open311 response, read in place (the spec's 403 sample has an HTTP line)."""
    raw = (realworld / "open311" / relative).read_bytes()
    raw = raw[raw.index(b"<?xml") :] if b"<?xml" in raw else raw
    return etree.fromstring(raw, etree.XMLParser(resolve_entities=False, no_network=True))


def ours(response: httpx.Response) -> etree._Element:
    assert response.headers["content-type"].startswith("text/xml"), response.headers
    return etree.fromstring(response.content)
