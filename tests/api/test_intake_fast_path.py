"""POST /requests takes a shortcut past FastAPI's routing (hub.api.app.IntakeFastPath):
the same answers whatever the body encoding, the route still documented and measured."""

from __future__ import annotations

from pathlib import Path

import httpx

from hub.observability.metrics import HTTP_REQUESTS
from hub.services.runtime import Hub
from tests.api.conftest import BASE
from tests.api.test_open311_errors import LIGHT, errors_json, errors_xml


async def test_multipart_and_urlencoded_bodies_make_the_same_case(
    any_client: httpx.AsyncClient, any_api_key: str, any_hub: Hub
) -> None:
    form = {"api_key": any_api_key, **LIGHT, "source_system": "crm", "source_id": "77"}
    multipart = {name: (None, value) for name, value in form.items()}
    first = await any_client.post(f"{BASE}/requests.json", files=multipart)
    again = await any_client.post(f"{BASE}/requests.json", data=form)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()[0]["service_request_id"] == again.json()[0]["service_request_id"]
    with any_hub.uow() as uow:
        case = uow.cases.get(first.json()[0]["service_request_id"])
        assert case.attributes == {"condition": "out"} and case.lat == 42.3601


async def test_percent_encoded_utf8_and_plus_are_decoded(
    client: httpx.AsyncClient, api_key: str, hub: Hub
) -> None:
    body = (
        f"api_key={api_key}&service_code=STRLGHT&lat=42.36&long=-71.05"
        "&attribute%5Bcondition%5D=out&description=caf%C3%A9+on+Elm&description="
    )
    response = await client.post(
        f"{BASE}/requests.json",
        content=body.encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 201, response.text
    with hub.uow() as uow:
        case = uow.cases.get(response.json()[0]["service_request_id"])
    assert case.description == "café on Elm"  # the last non-empty value wins


async def test_errors_keep_the_open311_form_in_both_formats(
    client: httpx.AsyncClient, api_key: str, realworld: Path
) -> None:
    assert "api_key" in errors_json(await client.post(f"{BASE}/requests.json", data=LIGHT), 403)[0]
    errors_xml(await client.post(f"{BASE}/requests.xml", data=LIGHT), 403, realworld)
    too_many = "&".join(f"f{i}=x" for i in range(1001))
    response = await client.post(
        f"{BASE}/requests.json",
        content=too_many.encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert "Too many fields" in errors_json(response, 400)[0]
    missing = {"api_key": api_key, "service_code": "NOPE", "lat": "1", "long": "1"}
    assert "NOPE" in errors_json(await client.post(f"{BASE}/requests.json", data=missing), 404)[0]
    assert (
        "unknown format"
        in errors_json(await client.post(f"{BASE}/requests.csv", data=LIGHT), 404)[0]
    )


async def test_route_documented_and_labelled_in_metrics(
    client: httpx.AsyncClient, api_key: str
) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"][f"{BASE}/requests.{{fmt}}"][
        "post"
    ]
    names = {(p["name"], p["in"]) for p in operation["parameters"]}
    assert {("fmt", "path"), ("Idempotency-Key", "header")} <= names
    assert "application/x-www-form-urlencoded" in operation["requestBody"]["content"]
    route = f"{BASE}/requests.{{fmt}}"
    labels = {"method": "POST", "route": route, "status": "201"}
    before = HTTP_REQUESTS.labels(**labels)._value.get()
    response = await client.post(f"{BASE}/requests.json", data={"api_key": api_key, **LIGHT})
    assert response.status_code == 201 and response.headers.get("x-request-id")
    assert HTTP_REQUESTS.labels(**labels)._value.get() == before + 1
