"""The Accela-like SOAP simulator over real HTTP, with hand-written envelopes (no zeep):
what a SOAP client of any make would see."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from lxml import etree

from hub.testing.simulators.base import SimulatorServer
from hub.testing.simulators.codeenforcement import (
    DEFAULT_PASSWORD,
    NS,
    SERVICE_PATH,
    SOAP_ENV,
    STATUS_TYPES,
    CodeEnforcementSimulator,
)

WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
TYPE = "Enforcement/Property Maintenance/Overgrown Lot/NA"


@pytest.fixture(scope="module")
def server():
    with SimulatorServer(CodeEnforcementSimulator()) as running:
        yield running


@pytest.fixture
def client(server):
    server.simulator.reset()
    server.simulator.set_faults("none")
    with httpx.Client(base_url=server.url, timeout=5) as http:
        yield http


def call(client: httpx.Client, body: str, password: str = DEFAULT_PASSWORD) -> httpx.Response:
    header = (
        f'<soap:Header><wsse:Security xmlns:wsse="{WSSE}"><wsse:UsernameToken>'
        f"<wsse:Username>hub</wsse:Username><wsse:Password>{password}</wsse:Password>"
        "</wsse:UsernameToken></wsse:Security></soap:Header>"
    )
    envelope = (
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}" xmlns:ce="{NS}">{header}'
        f"<soap:Body>{body}</soap:Body></soap:Envelope>"
    )
    return client.post(SERVICE_PATH, content=envelope, headers={"content-type": "text/xml"})


def create(client: httpx.Client, ref: str = "hub-1", record_type: str = TYPE) -> httpx.Response:
    return call(
        client,
        f"<ce:CreateCase><ce:Case><ce:RecordType>{record_type}</ce:RecordType>"
        "<ce:Address><ce:StreetAddress>48 Dorchester Ave</ce:StreetAddress></ce:Address>"
        "<ce:Contact><ce:FirstName>Jane</ce:FirstName></ce:Contact>"
        f"<ce:ExternalReference>{ref}</ce:ExternalReference></ce:Case></ce:CreateCase>",
    )


def xml(response: httpx.Response) -> etree._Element:
    return etree.fromstring(response.content)


def text(root: etree._Element, path: str) -> str | None:
    return root.findtext(".//" + "/".join(f"{{{NS}}}{p}" for p in path.split("/")))


def fault_code(response: httpx.Response) -> str | None:
    assert response.status_code == 500
    return text(xml(response), "CaseServiceFault/Code")


def test_serves_its_wsdl_with_the_live_address_and_the_xsd_next_to_it(client, server) -> None:
    wsdl = client.get(SERVICE_PATH + "?wsdl")
    assert wsdl.status_code == 200
    root = etree.fromstring(wsdl.content)
    [address] = root.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address.get("location") == server.url + SERVICE_PATH
    [schema_import] = root.iter("{http://www.w3.org/2001/XMLSchema}import")
    xsd = client.get(f"/services/{schema_import.get('schemaLocation')}")
    assert xsd.status_code == 200 and b"RecordStatus" in xsd.content


def test_create_answers_a_case_record_in_naive_local_time(client) -> None:
    answer = create(client)
    assert answer.status_code == 200
    root = xml(answer)
    assert text(root, "CreateCaseResponse/Case/Status") == "Received"
    assert text(root, "Case/StatusType") == "UNASSIGNED"
    stamp = datetime.fromisoformat(text(root, "Case/StatusDate"))
    assert stamp.tzinfo is None  # no offset on the wire, like an on-prem install
    local_now = datetime.now(ZoneInfo("America/New_York")).replace(tzinfo=None)
    assert abs(local_now - stamp) < timedelta(minutes=1)


def test_creates_are_not_deduplicated_and_find_returns_the_oldest(client) -> None:
    first = text(xml(create(client)), "Case/CaseId")
    second = text(xml(create(client)), "Case/CaseId")
    assert first != second
    state = client.get("/__sim__/state").json()
    assert state["create_calls"] == {"hub-1": 2} and state["duplicates"] == {"hub-1": 2}
    found = call(
        client,
        "<ce:FindCaseByReference><ce:ExternalReference>hub-1"
        "</ce:ExternalReference></ce:FindCaseByReference>",
    )
    assert text(xml(found), "Case/CaseId") == first
    none = call(
        client,
        "<ce:FindCaseByReference><ce:ExternalReference>nope"
        "</ce:ExternalReference></ce:FindCaseByReference>",
    )
    assert xml(none).find(f".//{{{NS}}}Case") is None


def test_faults_for_credentials_record_type_and_unknown_case(client) -> None:
    refused = call(client, "<ce:GetCase><ce:CaseId>x</ce:CaseId></ce:GetCase>", password="wrong")
    assert fault_code(refused) == "AUTHENTICATION_FAILED"
    assert xml(refused).findtext(".//faultcode") == "wsse:FailedAuthentication"
    assert fault_code(create(client, record_type="Not/A/Type/NA")) == "INVALID_RECORD_TYPE"
    missing = call(client, "<ce:GetCase><ce:CaseId>ENF26-99999</ce:CaseId></ce:GetCase>")
    assert fault_code(missing) == "CASE_NOT_FOUND"
    assert xml(missing).findtext(".//faultcode") == "soap:Client"


def test_a_request_with_entities_is_refused_unexpanded(client) -> None:
    evil = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body>&a;</soap:Body></soap:Envelope>'
    )
    answer = client.post(SERVICE_PATH, content=evil)
    assert fault_code(answer) == "VALIDATION_ERROR"


def test_inspectors_walk_the_workflow_with_inspections_violations_and_closure(
    client, server
) -> None:
    case_id = text(xml(create(client)), "Case/CaseId")
    seen = []
    for _ in range(7):
        [step] = client.post("/__sim__/advance", json={"count": 1}).json()["changed"]
        seen.append(step["NewStatus"])
    assert seen == [
        "Assigned",
        "Pending Inspection",
        "Inspection Scheduled",
        "Inspected - Violation",
        "Notice of Violation Sent",
        "Re-inspection",
        "Closed - Compliance",
    ]
    root = xml(call(client, f"<ce:GetCase><ce:CaseId>{case_id}</ce:CaseId></ce:GetCase>"))
    assert text(root, "Case/ClosureCode") == "COMPLIED"
    results = [e.text for e in root.iter(f"{{{NS}}}Result")]
    assert results == ["Failed", "Passed"]  # initial inspection, re-inspection
    assert text(root, "Violations/Violation/Code") == "IPMC-302.4"  # weeds, IPMC 302.4
    photos = [e.text for e in root.iter(f"{{{NS}}}Url")]
    assert len(photos) == 2 and client.get(photos[0]).content.startswith(b"\xff\xd8")
    assert set(STATUS_TYPES) >= set(seen)


def test_cancel_voids_once_then_refuses(client) -> None:
    case_id = text(xml(create(client)), "Case/CaseId")
    body = (
        f"<ce:CancelCase><ce:CaseId>{case_id}</ce:CaseId><ce:Reason>dup</ce:Reason></ce:CancelCase>"
    )
    assert text(xml(call(client, body)), "Case/Status") == "Void"
    assert fault_code(call(client, body)) == "STATUS_TRANSITION_NOT_ALLOWED"


def test_changed_since_pages_in_status_date_order(client) -> None:
    since = datetime.now(ZoneInfo("America/New_York")).replace(tzinfo=None) - timedelta(minutes=1)
    for n in range(3):
        create(client, ref=f"hub-{n}")
    body = (
        f"<ce:GetCasesChangedSince><ce:Since>{since.isoformat()}</ce:Since>"
        "<ce:MaxResults>2</ce:MaxResults></ce:GetCasesChangedSince>"
    )
    root = xml(call(client, body))
    refs = [e.text for e in root.iter(f"{{{NS}}}ExternalReference")]
    assert refs == ["hub-0", "hub-1"] and text(root, "More") == "true"


def test_state_does_not_echo_requester_contact(client) -> None:
    create(client)
    state = client.get("/__sim__/state").json()
    assert "Jane" not in str(state) and state["records"][0]["has_contact"] is True


# --------------------------------------------------------------------------- faults


def test_error_envelope_is_a_retryable_soap_fault(client) -> None:
    client.post("/__sim__/faults", json={"error_envelope": 1.0})
    answer = create(client)
    assert fault_code(answer) == "DATABASE_DEADLOCK"
    assert text(xml(answer), "CaseServiceFault/Retryable") == "true"
    assert xml(answer).findtext(".//faultcode") == "soap:Server"
    assert client.get("/__sim__/state").json()["records"] == []  # nothing committed


def test_5xx_is_an_html_page_and_429_says_when(client) -> None:
    client.post("/__sim__/faults", json={"error_5xx": 1.0})
    answer = create(client)
    assert answer.status_code == 503 and answer.headers["content-type"].startswith("text/html")
    client.post("/__sim__/faults", json={"rate_limit_429": 1.0, "retry_after_seconds": 3})
    assert create(client).headers["retry-after"]


def test_malformed_cycles_html_truncated_and_billion_laughs_after_commit(client) -> None:
    client.post("/__sim__/faults", json={"malformed": 1.0})
    html, cut, laughs = create(client, "a"), create(client, "b"), create(client, "c")
    assert html.status_code == 200 and html.content.startswith(b"<!DOCTYPE html>")
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(cut.content)
    assert b"<!ENTITY lol9" in laughs.content and b"&lol9;" in laughs.content
    assert len(laughs.content) < 2000  # the expansion is the client's problem, not the wire's
    assert len(client.get("/__sim__/state").json()["records"]) == 3  # each one committed


def test_timeout_after_commit_commits_then_hangs(client) -> None:
    client.post("/__sim__/faults", json={"timeout_after_commit": 1.0, "hang_seconds": 2})
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            SERVICE_PATH, content=create_body(), headers={"content-type": "text/xml"}, timeout=0.5
        )
    assert client.get("/__sim__/state").json()["create_calls"] == {"hub-1": 1}


def create_body() -> bytes:
    return (
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}" xmlns:ce="{NS}"><soap:Header>'
        f'<wsse:Security xmlns:wsse="{WSSE}"><wsse:UsernameToken><wsse:Username>hub'
        f"</wsse:Username><wsse:Password>{DEFAULT_PASSWORD}</wsse:Password></wsse:UsernameToken>"
        f"</wsse:Security></soap:Header><soap:Body><ce:CreateCase><ce:Case><ce:RecordType>{TYPE}"
        "</ce:RecordType><ce:Address><ce:StreetAddress>1 Main St</ce:StreetAddress></ce:Address>"
        "<ce:ExternalReference>hub-1</ce:ExternalReference></ce:Case></ce:CreateCase>"
        "</soap:Body></soap:Envelope>"
    ).encode()


def test_reset_forgets_everything(client) -> None:
    create(client)
    assert client.post("/__sim__/reset").json() == {"reset": True}
    assert client.get("/__sim__/state").json()["records"] == []


def test_cli_serves_the_simulator(tmp_path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "simulate", "codeenforcement", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}{SERVICE_PATH}?wsdl", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("hub simulate codeenforcement did not answer")
        assert answer.status_code == 200 and b"CaseService" in answer.content
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_every_routed_record_type_is_configured_and_cites_an_xsd_violation() -> None:
    from adapters.codeenforcement.client import WSDL_PATH
    from hub.mapping import load_mappings
    from hub.testing.harness import REPO_MAPPINGS
    from hub.testing.simulators.codeenforcement import RECORD_TYPES

    mappings = load_mappings(REPO_MAPPINGS)
    routed = {
        route.work_order_type
        for mapping in mappings.departments.values()
        for route in mapping.model.routes
        if (route.department or mapping.name) == "codeenforcement"
    }
    assert routed and routed <= set(RECORD_TYPES)
    xsd = etree.parse(str(WSDL_PATH.with_suffix(".xsd")))
    codes = xsd.xpath(
        "//xsd:simpleType[@name='ViolationCode']//xsd:enumeration/@value",
        namespaces={"xsd": "http://www.w3.org/2001/XMLSchema"},
    )
    assert set(RECORD_TYPES.values()) <= set(codes)
