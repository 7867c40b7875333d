"""Every error path answers in the Open311 form (JSON list or <errors>), never a 500."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from hub.api import xml
from hub.services.apikeys import API_KEYS_ENV, ApiKeyService
from hub.services.runtime import Hub
from tests.api.conftest import BASE, ours, paths, reference

LIGHT = {
    "service_code": "STRLGHT",
    "lat": "42.3601",
    "long": "-71.0589",
    "attribute[condition]": "out",
}
BULK = {
    "service_code": "BULKITEM",
    "address_string": "12 Elm St",
    "attribute[item_types][]": ["furniture", "mattress"],
    "attribute[item_count]": "2",
}


def errors_json(response: httpx.Response, status: int) -> list[str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, list) and body
    assert all(set(e) == {"code", "description"} for e in body)
    return [e["description"] for e in body]


def errors_xml(response: httpx.Response, status: int, realworld: Path) -> list[str]:
    assert response.status_code == status, response.text
    doc = ours(response)
    real = reference(realworld, "spec_examples/get_service_request_not_found.xml")
    assert paths(doc) == paths(real)
    assert doc.findtext("error/code") == str(status)
    return [e.findtext("description") for e in doc]


async def _post(client: httpx.AsyncClient, form: dict, fmt: str = "json", **kw):
    return await client.post(f"{BASE}/requests.{fmt}", data=form, **kw)


# --------------------------------------------------------------------------- 400 / 404


@pytest.mark.parametrize(
    ("change", "status", "needle"),
    [
        ({"service_code": "NOPE"}, 404, "service_code 'NOPE' not found"),
        ({"service_code": ""}, 400, "service_code is required"),
        ({"lat": "91"}, 400, "not a latitude"),
        ({"long": "west"}, 400, "not a longitude"),
        ({"lat": "nan"}, 400, "not a latitude"),
        ({"long": ""}, 400, "lat and long must be given together"),
        ({"lat": "", "long": ""}, 400, "a location is required"),
        ({"attribute[condition]": ""}, 400, "attribute[condition] is required"),
        ({"attribute[condition]": "smoking"}, 400, "'smoking' not in"),
        ({"description": "x" * 4001}, 400, "longer than 4000"),
        ({"media_url": "file:///etc/passwd"}, 400, "media_url must be an http(s) URL"),
        ({"source_system": "crm"}, 400, "source_system and source_id must be given together"),
    ],
)
async def test_post_validation(
    client: httpx.AsyncClient,
    api_key: str,
    realworld: Path,
    change: dict,
    status: int,
    needle: str,
) -> None:
    form = {"api_key": api_key, **LIGHT, **change}
    assert any(needle in d for d in errors_json(await _post(client, form), status))
    assert any(needle in d for d in errors_xml(await _post(client, form, "xml"), status, realworld))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"attribute[item_types][]": ["furniture", "piano"]}, "'piano' not in"),
        ({"attribute[item_count]": "two"}, "'two' is not a number"),
        ({"attribute[item_count]": ["1", "2"]}, "takes one value"),
        ({"attribute[pickup_date]": "next tuesday"}, "not a W3C datetime"),
        ({"attribute[item_types][]": []}, "attribute[item_types] is required"),
    ],
)
async def test_attribute_datatypes(
    client: httpx.AsyncClient, api_key: str, change: dict, needle: str
) -> None:
    form = {"api_key": api_key, **BULK, **change}
    assert any(needle in d for d in errors_json(await _post(client, form), 400))


async def test_valid_multivalue_number_and_datetime(
    client: httpx.AsyncClient, api_key: str, hub: Hub
) -> None:
    form = {
        "api_key": api_key,
        **BULK,
        "attribute[pickup_date]": "2026-12-01T08:00:00-05:00",
        "attribute[fixmystreet_id]": "FMS-1",
    }
    response = await _post(client, form)
    assert response.status_code == 201, response.text
    with hub.uow() as uow:
        [case] = uow.cases.get_many(
            [uow.cases.get_by_source("fixmystreet", "FMS-1").hub_id]
        ).values()
    assert case.attributes["item_types"] == ["furniture", "mattress"]
    assert case.attributes["item_count"] == 2
    assert case.attributes["pickup_date"] == "2026-12-01T13:00:00+00:00"


async def test_all_problems_reported_at_once(client: httpx.AsyncClient, api_key: str) -> None:
    form = {"api_key": api_key, "service_code": "STRLGHT", "lat": "100", "long": "0"}
    descriptions = errors_json(await _post(client, form), 400)
    assert len(descriptions) == 3  # bad lat, no usable location, missing attribute


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("start_date=yesterday", "start_date 'yesterday' is not a W3C datetime"),
        ("end_date=2024-13-45", "end_date '2024-13-45'"),
        ("start_date=2024-01-01T00:00:00Z&end_date=2024-06-01T00:00:00Z", "at most 90 days"),
        ("start_date=2024-02-01T00:00:00Z&end_date=2024-01-01T00:00:00Z", "before start_date"),
        ("status=pending", "status must be open or closed"),
    ],
)
async def test_get_requests_bad_filters(
    client: httpx.AsyncClient, realworld: Path, query: str, needle: str
) -> None:
    assert any(
        needle in d for d in errors_json(await client.get(f"{BASE}/requests.json?{query}"), 400)
    )
    assert any(
        needle in d
        for d in errors_xml(await client.get(f"{BASE}/requests.xml?{query}"), 400, realworld)
    )


async def test_updates_bad_date(client: httpx.AsyncClient) -> None:
    errors_json(await client.get(f"{BASE}/servicerequestupdates.json?start_date=soon"), 400)


@pytest.mark.parametrize(
    "path",
    [
        "/requests/no-such-id.json",
        "/tokens/no-such-token.json",
        "/services/NOPE.json",
        "/services.csv",
        "/nothing-here.json",
    ],
)
async def test_not_found(client: httpx.AsyncClient, realworld: Path, path: str) -> None:
    errors_json(await client.get(BASE + path), 404)
    xml_path = path.replace(".json", ".xml")
    if xml_path.endswith(".xml"):
        errors_xml(await client.get(BASE + xml_path), 404, realworld)


async def test_wrong_method(client: httpx.AsyncClient, realworld: Path) -> None:
    errors_json(await client.delete(f"{BASE}/requests.json"), 405)
    errors_xml(await client.put(f"{BASE}/services.xml"), 405, realworld)


# --------------------------------------------------------------------------- 403


async def test_missing_and_invalid_api_key(client: httpx.AsyncClient, realworld: Path) -> None:
    assert "api_key is required" in errors_json(await _post(client, LIGHT), 403)[0]
    bad = {**LIGHT, "api_key": "hub_not-a-key"}
    assert "Invalid api_key" in errors_xml(await _post(client, bad, "xml"), 403, realworld)[0]


async def test_revoked_key_refused(client: httpx.AsyncClient, hub: Hub) -> None:
    service = ApiKeyService(hub.engine)
    _, key = service.create("old-crm")
    service.revoke("old-crm")
    errors_json(await _post(client, {**LIGHT, "api_key": key}), 403)
    assert [k.active for k in service.list()] == [False]


async def test_revocation_reaches_a_running_app(client: httpx.AsyncClient, hub: Hub) -> None:
    service = ApiKeyService(hub.engine)
    _, key = service.create("crm")
    assert (await _post(client, {**LIGHT, "api_key": key})).status_code == 201
    service.revoke("crm")
    client.app.state.open311.keys.cache_seconds = 0  # type: ignore[attr-defined]
    client.app.state.open311.keys.forget()  # type: ignore[attr-defined]
    errors_json(await _post(client, {**LIGHT, "api_key": key}), 403)


async def test_env_keys(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, " first-key , second-key ")
    assert (await _post(client, {**LIGHT, "api_key": "second-key"})).status_code == 201
    errors_json(await _post(client, {**LIGHT, "api_key": "third-key"}), 403)


def test_keys_are_stored_hashed(hub: Hub) -> None:
    from sqlalchemy import select

    from hub.store import tables as t

    record, key = ApiKeyService(hub.engine).create("crm")
    with hub.engine.connect() as conn:
        row = conn.execute(select(t.api_keys)).one()
    assert key not in str(tuple(row)) and row.prefix == key[:12] == record.prefix
    assert len(row.key_hash) == 64


# --------------------------------------------------------------------------- 413 and junk


async def test_oversized_body_is_413(client: httpx.AsyncClient, realworld: Path) -> None:
    big = b"description=" + b"x" * (1024 * 1024 + 1)
    headers = {"content-type": "application/x-www-form-urlencoded"}
    errors_json(await client.post(f"{BASE}/requests.json", content=big, headers=headers), 413)
    errors_xml(
        await client.post(f"{BASE}/requests.xml", content=big, headers=headers), 413, realworld
    )

    async def chunks():  # no Content-Length: counted while streaming
        for _ in range(20):
            yield b"x" * 65536

    response = await client.post(f"{BASE}/requests.json", content=chunks(), headers=headers)
    errors_json(response, 413)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded"),
        (b"--x\r\nbroken multipart", "multipart/form-data; boundary=x"),
        (b'{"service_code": "STRLGHT"}', "application/json"),
        (b"attribute[=1&attribute[]]=2&attribute[a][b]=3", "application/x-www-form-urlencoded"),
    ],
)
async def test_junk_bodies_never_500(
    client: httpx.AsyncClient, api_key: str, body: bytes, content_type: str
) -> None:
    response = await client.post(
        f"{BASE}/requests.json?api_key={api_key}",
        content=body,
        headers={"content-type": content_type},
    )
    assert 400 <= response.status_code < 500, response.text
    assert all(set(e) == {"code", "description"} for e in response.json())


# --------------------------------------------------------------------------- idempotency


async def test_idempotency_key_returns_the_same_case(
    any_client: httpx.AsyncClient, any_api_key: str, any_hub: Hub
) -> None:
    form = {"api_key": any_api_key, **LIGHT}
    headers = {"Idempotency-Key": "crm-4711"}
    first = await _post(any_client, form, headers=headers)
    again = await _post(any_client, form, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()[0]["service_request_id"] == again.json()[0]["service_request_id"]
    other = await _post(any_client, form, headers={"Idempotency-Key": "crm-4712"})
    assert other.json()[0]["service_request_id"] != first.json()[0]["service_request_id"]
    with any_hub.uow() as uow:
        assert uow.cases.count() == 2


async def test_source_id_fields_and_concurrent_duplicates(
    any_client: httpx.AsyncClient, any_api_key: str, any_hub: Hub
) -> None:
    form = {"api_key": any_api_key, **LIGHT, "source_system": "motorola-csr", "source_id": "9"}
    responses = await asyncio.gather(*(_post(any_client, form) for _ in range(12)))
    ids = {r.json()[0]["service_request_id"] for r in responses}
    assert len(ids) == 1
    assert sorted(r.status_code for r in responses) == [200] * 11 + [201]
    with any_hub.uow() as uow:
        assert uow.cases.count() == 1
        assert uow.cases.get_by_source("motorola-csr", "9").hub_id in ids


async def test_reused_key_for_another_service_is_refused(
    client: httpx.AsyncClient, api_key: str
) -> None:
    headers = {"Idempotency-Key": "k1"}
    await _post(client, {"api_key": api_key, **LIGHT}, headers=headers)
    form = {"api_key": api_key, "service_code": "POTHOLE", "lat": "42.3", "long": "-71.1"}
    assert (
        "different service_code" in errors_json(await _post(client, form, headers=headers), 400)[0]
    )


async def test_fixmystreet_resend_is_one_case(client: httpx.AsyncClient, api_key: str) -> None:
    form = {"api_key": api_key, **LIGHT, "attribute[fixmystreet_id]": "123"}
    first, second = [await _post(client, form) for _ in range(2)]
    assert first.json() == second.json()


# --------------------------------------------------------------------------- XML input


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<service_requests><request><description>&lol4;</description></request></service_requests>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><service_requests>&x;</service_requests>"""


@pytest.mark.parametrize("document", [BILLION_LAUGHS, XXE])
def test_xml_input_refuses_entities(document: bytes) -> None:
    with pytest.raises(xml.UnsafeXML):
        xml.parse(document)


def test_xml_round_trip() -> None:
    data = [{"code": 400, "description": "a < b & c"}]
    assert xml.to_data(xml.parse(xml.render("errors", data))) == [
        {"code": "400", "description": "a < b & c"}
    ]
