"""Every endpoint in JSON and XML; our XML has the element names and nesting of real
Open311 responses (read in place from shared/realworld/open311/)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from hub.model import CaseStatus
from hub.services.runtime import Hub
from hub.services.status import change_status
from tests.api.conftest import BASE, ours, paths, reference

LIGHT = {
    "service_code": "STRLGHT",
    "lat": "42.3601",
    "long": "-71.0589",
    "attribute[condition]": "out",
    "description": "Light out by the school",
}


async def post(client: httpx.AsyncClient, key: str, fmt: str = "json", **extra) -> httpx.Response:
    return await client.post(f"{BASE}/requests.{fmt}", data={"api_key": key, **LIGHT, **extra})


# --------------------------------------------------------------------------- discovery


async def test_discovery_json_and_xml(client: httpx.AsyncClient) -> None:
    data = (await client.get(f"{BASE}/discovery.json")).json()
    assert set(data) == {"changeset", "contact", "key_service", "endpoints"}
    endpoint = data["endpoints"][0]
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert endpoint["url"].endswith("/open311/v2")
    assert {"text/xml", "application/json"} <= set(endpoint["formats"])
    doc = ours(await client.get(f"{BASE}/discovery.xml"))
    assert "discovery/endpoints/endpoint/formats/format" in paths(doc)


# --------------------------------------------------------------------------- services


@pytest.mark.parametrize(
    "real", ["sf/sf_services.xml", "open311_adapter_outputs/eastherts_L41-97_services.xml"]
)
async def test_services_xml_matches_real_services(
    client: httpx.AsyncClient, realworld: Path, real: str
) -> None:
    mine = paths(ours(await client.get(f"{BASE}/services.xml")))
    theirs = paths(reference(realworld, real))
    assert mine == theirs - {"services/service/groups", "services/service/groups/group"}


async def test_services_json(client: httpx.AsyncClient, hub: Hub) -> None:
    data = (await client.get(f"{BASE}/services.json")).json()
    assert [s["service_code"] for s in data] == list(hub.mappings.catalogue)
    pothole = next(s for s in data if s["service_code"] == "POTHOLE")
    assert pothole["metadata"] is True and pothole["type"] == "realtime"
    assert pothole["keywords"].startswith("pothole,")
    assert {s["type"] for s in data} == {"realtime", "batch", "blackbox"}


DEFINITIONS = [
    "upstream_merton/service_definition.xml",
    "open311_adapter_outputs/eastherts_L107-151_service_definition.xml",
    "open311_adapter_outputs/confirm_L810-915_service_definition.xml",
    "open311_adapter_outputs/enfield_verint_L234-307_service_definition.xml",
]


async def test_service_definition_xml_matches_real(
    client: httpx.AsyncClient, realworld: Path
) -> None:
    mine = paths(ours(await client.get(f"{BASE}/services/BULKITEM.xml")))
    real = [paths(reference(realworld, name)) for name in DEFINITIONS]
    assert mine <= set().union(*real)  # no element a real server does not emit
    common = set.intersection(*real) - {"service_definition/attributes/attribute/automated"}
    assert common <= mine  # and every element they all emit
    assert "service_definition/attributes/attribute/values/value/key" in mine


async def test_service_definition_json(client: httpx.AsyncClient) -> None:
    data = (await client.get(f"{BASE}/services/BULKITEM.json")).json()
    assert data["service_code"] == "BULKITEM"
    first = data["attributes"][0]
    assert set(first) == {
        "variable",
        "code",
        "datatype",
        "required",
        "datatype_description",
        "order",
        "description",
        "values",
    }
    assert [a["order"] for a in data["attributes"]] == sorted(
        a["order"] for a in data["attributes"]
    )
    assert {"key": "mattress", "name": "Mattress or box spring"} in first["values"]


# --------------------------------------------------------------------------- POST / GET


async def test_post_xml_matches_spec_example(
    client: httpx.AsyncClient, api_key: str, realworld: Path
) -> None:
    response = await post(client, api_key, "xml")
    assert response.status_code == 201
    doc = ours(response)
    assert paths(doc) == paths(reference(realworld, "spec_examples/post_service_request.xml"))


async def test_post_json_then_get_both_formats(
    any_client: httpx.AsyncClient, any_api_key: str, realworld: Path
) -> None:
    response = await post(any_client, any_api_key, email="r@example.org", account_id="A-7")
    assert response.status_code == 201
    [item] = response.json()
    assert set(item) == {"service_request_id", "service_notice", "account_id"}
    assert item["account_id"] == "A-7"
    sid = item["service_request_id"]
    [got] = (await any_client.get(f"{BASE}/requests/{sid}.json")).json()
    assert got["service_request_id"] == sid and got["status"] == "open"
    assert got["service_code"] == "STRLGHT" and got["lat"] == 42.3601
    assert got["agency_responsible"] == "publicworks"
    assert got["requested_datetime"].endswith("Z")
    assert "email" not in got and "r@example.org" not in str(got)  # no PII on reads
    doc = ours(await any_client.get(f"{BASE}/requests/{sid}.xml"))
    assert paths(doc) == paths(reference(realworld, "spec_examples/get_service_request.xml"))


async def test_list_requests_xml_matches_real(
    client: httpx.AsyncClient, api_key: str, realworld: Path
) -> None:
    for _ in range(2):
        await post(client, api_key)
    doc = ours(await client.get(f"{BASE}/requests.xml"))
    assert len(doc) == 2
    assert paths(doc) == paths(reference(realworld, "spec_examples/service_requests.xml"))
    toronto = paths(reference(realworld, "toronto/toronto_requests_many.xml"))
    assert paths(doc) == toronto
    empty = await client.get(f"{BASE}/requests.xml?service_code=POTHOLE")
    assert paths(ours(empty)) == paths(
        reference(realworld, "spec_examples/service_requests_empty.xml")
    )


async def test_batch_service_returns_token(
    any_client: httpx.AsyncClient, any_api_key: str, realworld: Path
) -> None:
    form = {"api_key": any_api_key, "service_code": "MISSEDTR", "address_string": "1 Main St"}
    response = await any_client.post(f"{BASE}/requests.xml", data=form)
    assert response.status_code == 201
    assert paths(ours(response)) == paths(
        reference(realworld, "upstream_merton/post_requests_token.xml")
    ) | {"service_requests/request/service_notice", "service_requests/request/account_id"}
    token = ours(response).findtext("request/token")
    doc = ours(await any_client.get(f"{BASE}/tokens/{token}.xml"))
    assert paths(doc) == paths(reference(realworld, "spec_examples/request_id_from_token.xml"))
    [item] = (await any_client.get(f"{BASE}/tokens/{token}.json")).json()
    assert item["token"] == token
    [case] = (await any_client.get(f"{BASE}/requests/{item['service_request_id']}.json")).json()
    assert case["service_code"] == "MISSEDTR"


async def test_blackbox_service_returns_no_id(client: httpx.AsyncClient, api_key: str) -> None:
    form = {"api_key": api_key, "service_code": "NOISE", "address_id": "A-1"}
    [item] = (await client.post(f"{BASE}/requests.json", data=form)).json()
    assert "service_request_id" not in item and "token" not in item


# --------------------------------------------------------------------------- updates


def _advance(hub: Hub, case_id: str, status: CaseStatus, raw: str | None, note: str) -> None:
    with hub.uow() as uow:
        case = uow.cases.get(case_id)
        assert case is not None
        change_status(
            uow,
            case,
            status,
            source="poll",
            department="publicworks",
            raw_code=raw,
            description=note,
        )
        uow.commit()


@pytest.mark.parametrize(
    "real",
    [
        "open311_adapter_outputs/mysociety_L81-99_service_request_updates.xml",
        "open311_adapter_outputs/confirm_L1364-1393_service_request_updates.xml",
        "open311_adapter_outputs/warwick_L92-102_service_request_updates.xml",
    ],
)
async def test_updates_xml_matches_real(
    client: httpx.AsyncClient, api_key: str, hub: Hub, realworld: Path, real: str
) -> None:
    sid = (await post(client, api_key)).json()[0]["service_request_id"]
    _advance(hub, sid, CaseStatus.ONSITE, "INP", "Crew on site")
    doc = ours(await client.get(f"{BASE}/servicerequestupdates.xml"))
    theirs = paths(reference(realworld, real))
    optional = {"service_request_updates/request_update/external_status_code"}
    assert paths(doc) - optional == theirs - optional


async def test_updates_json_window_and_fields(
    any_client: httpx.AsyncClient, any_api_key: str, any_hub: Hub
) -> None:
    sid = (await post(any_client, any_api_key)).json()[0]["service_request_id"]
    _advance(any_hub, sid, CaseStatus.ONSITE, "INP", "Crew on site")
    _advance(any_hub, sid, CaseStatus.RESOLVED, "CLOSED-FIXED", "Lamp replaced")
    updates = (await any_client.get(f"{BASE}/servicerequestupdates.json")).json()
    assert [u["status"] for u in updates] == ["open", "in_progress", "fixed"]
    last = updates[-1]
    assert set(last) == {
        "update_id",
        "service_request_id",
        "status",
        "updated_datetime",
        "description",
        "media_url",
        "external_status_code",
    }
    assert last["external_status_code"] == "CLOSED-FIXED"
    assert last["description"] == "Lamp replaced" and last["media_url"] == ""
    assert len({u["update_id"] for u in updates}) == 3
    window = {"start_date": "2001-01-01T00:00:00Z", "end_date": "2001-02-01T00:00:00Z"}
    assert (await any_client.get(f"{BASE}/servicerequestupdates.json", params=window)).json() == []
    [case] = (await any_client.get(f"{BASE}/requests/{sid}.json")).json()
    assert case["status"] == "closed" and case["status_notes"] == "Lamp replaced"


# --------------------------------------------------------------------------- operations


async def test_openapi_docs_health_ready(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert f"{BASE}/requests.{{fmt}}" in spec["paths"]
    assert "swagger" in (await client.get("/docs")).text.lower()
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_ready_is_503_on_an_unmigrated_database(tmp_path: Path) -> None:
    from tests.api.conftest import _client, make_hub

    hub = make_hub(f"sqlite:///{tmp_path / 'empty.db'}")
    async for c in _client(hub):
        response = await c.get("/ready")
        assert response.status_code == 503
        assert response.json()["checks"]["migrations"] != "ok"
    hub.dispose()
