"""Code-enforcement adapter against mocked HTTP (respx): the SOAP envelope it sends, the
safe parsing of what comes back, and the classification of every failure."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
import respx
from lxml import etree
from pydantic import SecretStr

from adapters.codeenforcement import CodeEnforcementAdapter, CodeEnforcementConfig
from adapters.codeenforcement.adapter import STATUS_CODES
from adapters.codeenforcement.client import (
    NS,
    SOAP_ENV,
    WSDL_PATH,
    LocalOnlyTransport,
    load_service_description,
)
from hub.adapters import (
    AuthFailed,
    MalformedResponse,
    OutboundWorkOrder,
    Permanent,
    Transient,
    UnknownOutcome,
)
from hub.testing.simulators.base import HTML_ERROR_PAGE
from hub.testing.simulators.codeenforcement import billion_laughs

BASE = "http://ce.test"
ENDPOINT = "/services/CaseService"
PASSWORD = "pw-S3CRET-never-shown"
PII = "Jane Resident 555-0100"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
TYPE = "Enforcement/Property Maintenance/Overgrown Lot/NA"


def envelope(body: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_ENV}" '
        f'xmlns:ce="{NS}"><soap:Body>{body}</soap:Body></soap:Envelope>'
    ).encode()


def case_xml(case_id: str = "ENF26-00001", status: str = "Received", **extra: str) -> str:
    fields = {
        "CaseId": case_id,
        "RecordType": TYPE,
        "Status": status,
        "StatusType": "CLOSED" if status.startswith("Closed") or status == "Void" else "OPEN",
        "StatusDate": "2026-01-15T09:30:00.1234567",
        "OpenedDate": "2026-01-15T09:30:00",
        "ExternalReference": "hub-1",
        **extra,  # ClosureCode, ClosureComment come after the reference in the XSD
    }
    return "<ce:Case>" + "".join(f"<ce:{k}>{v}</ce:{k}>" for k, v in fields.items()) + "</ce:Case>"


def ok(body: str) -> httpx.Response:
    return httpx.Response(200, content=envelope(body), headers={"content-type": "text/xml"})


def fault(
    code: str, faultcode: str = "soap:Client", retryable: str | None = None
) -> httpx.Response:
    flag = f"<ce:Retryable>{retryable}</ce:Retryable>" if retryable else ""
    body = (
        f"<soap:Fault><faultcode>{faultcode}</faultcode><faultstring>bad {PII}</faultstring>"
        f"<detail><ce:CaseServiceFault><ce:Code>{code}</ce:Code><ce:Message>{PII}</ce:Message>"
        f"{flag}</ce:CaseServiceFault></detail></soap:Fault>"
    )
    return httpx.Response(500, content=envelope(body), headers={"content-type": "text/xml"})


def order(**payload: object) -> OutboundWorkOrder:
    return OutboundWorkOrder(
        hub_id="hub-1",
        department="codeenforcement",
        work_order_type=TYPE,
        payload={
            "Address": {"StreetAddress": "48 Dorchester Ave", "XCoordinate": -71.05},
            "Contact": {"FirstName": PII, "Phone": "555-0100"},
            "Priority": "Medium",
            **payload,
        },
    )


@pytest.fixture
async def adapter():
    config = CodeEnforcementConfig(
        base_url=BASE, username="hub", password=SecretStr(PASSWORD), timeout_seconds=2
    )
    adapter = CodeEnforcementAdapter(config)
    yield adapter
    await adapter.aclose()


@pytest.fixture
def ce():
    with respx.mock(using="httpx", base_url=BASE, assert_all_called=False) as mock:
        yield mock


def assert_clean(exc: BaseException) -> None:
    text = f"{exc} {exc!r}"
    for secret in (PASSWORD, PII):
        assert secret not in text
    assert exc.__cause__ is None  # httpx errors carry the request body: never chained


async def raised(call, expected: type[Exception]) -> Exception:
    with pytest.raises(expected) as info:
        await call
    assert_clean(info.value)
    return info.value


# --------------------------------------------------------------------------- the WSDL


def test_the_wsdl_is_loaded_once_from_the_package_and_never_from_the_network() -> None:
    assert WSDL_PATH.is_file() and WSDL_PATH.with_suffix(".xsd").is_file()
    assert load_service_description() is load_service_description()  # cached per process
    with pytest.raises(Exception, match="local files only"):
        LocalOnlyTransport().load("http://127.0.0.1:9/never.wsdl")


def test_status_codes_are_the_xsd_enumeration() -> None:
    xsd = etree.parse(str(WSDL_PATH.with_suffix(".xsd")))
    values = xsd.xpath(
        "//xsd:simpleType[@name='RecordStatus']//xsd:enumeration/@value",
        namespaces={"xsd": "http://www.w3.org/2001/XMLSchema"},
    )
    assert set(values) == STATUS_CODES


# --------------------------------------------------------------------------- wire format


async def test_create_sends_a_signed_document_literal_envelope(adapter, ce) -> None:
    create = ce.post(ENDPOINT).mock(
        return_value=ok(f"<ce:CreateCaseResponse>{case_xml()}</ce:CreateCaseResponse>")
    )
    ref = await adapter.create(order())
    request = create.calls.last.request
    assert request.headers["soapaction"] == f'"{NS}/CreateCase"'
    assert request.headers["content-type"].startswith("text/xml")
    sent = etree.fromstring(request.content)
    token = sent.find(f"{{{SOAP_ENV}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    assert token.findtext(f"{{{WSSE}}}Username") == "hub"
    assert token.findtext(f"{{{WSSE}}}Password") == PASSWORD
    case = sent.find(f"{{{SOAP_ENV}}}Body/{{{NS}}}CreateCase/{{{NS}}}Case")
    assert case.findtext(f"{{{NS}}}RecordType") == TYPE  # from the route when not mapped
    assert case.findtext(f"{{{NS}}}ExternalReference") == "hub-1"
    assert case.findtext(f"{{{NS}}}Address/{{{NS}}}XCoordinate") == "-71.05"
    assert (ref.external_id, ref.raw_status, ref.hub_reference) == (
        "ENF26-00001",
        "Received",
        "hub-1",
    )


async def test_find_by_reference_none_when_absent(adapter, ce) -> None:
    ce.post(ENDPOINT).mock(return_value=ok("<ce:FindCaseByReferenceResponse/>"))
    assert await adapter.find_by_reference("hub-1") is None


async def test_poll_reads_naive_local_dates_with_seven_fraction_digits(adapter, ce) -> None:
    closed = case_xml(
        status="Closed - Compliance", ClosureCode="COMPLIED", ClosureComment="Owner complied"
    )
    ce.post(ENDPOINT).mock(
        return_value=ok(
            f"<ce:GetCasesChangedSinceResponse>{closed}<ce:More>false</ce:More>"
            "</ce:GetCasesChangedSinceResponse>"
        )
    )
    from datetime import UTC, datetime

    page = await adapter.poll_changes(datetime(2026, 1, 1, tzinfo=UTC))
    [event] = page.events
    # 09:30 in New York in January is 14:30 UTC.
    assert event.occurred_at == datetime(2026, 1, 15, 14, 30, 0, 123456, tzinfo=UTC)
    assert (event.raw_code, event.closure_code, event.hub_reference) == (
        "Closed - Compliance",
        "COMPLIED",
        "hub-1",
    )


async def test_a_payload_field_the_wsdl_lacks_is_permanent_and_named(adapter, ce) -> None:
    error = await raised(adapter.create(order(CustomForms={"x": PII})), Permanent)
    assert "CustomForms" in str(error)
    assert not ce.calls  # refused before anything left


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (fault("AUTHENTICATION_FAILED", "wsse:FailedAuthentication"), AuthFailed),
        (fault("NOT_AUTHORIZED"), AuthFailed),
        (fault("VALIDATION_ERROR"), Permanent),
        (fault("INVALID_RECORD_TYPE"), Permanent),
        (fault("EMSE_SCRIPT_ERROR", "soap:Server"), Permanent),
        (fault("DATABASE_DEADLOCK", "soap:Server", "true"), Transient),
        (fault("SERVICE_UNAVAILABLE", "soap:Server"), Transient),
        (httpx.Response(500, html=HTML_ERROR_PAGE), Transient),
        (httpx.Response(503, html=HTML_ERROR_PAGE), Transient),
        (httpx.Response(401), AuthFailed),
        (httpx.Response(404, text="no such service"), Permanent),
        (httpx.Response(200, html=HTML_ERROR_PAGE), MalformedResponse),
        (httpx.Response(200, content=envelope("<ce:CreateCaseResponse><ce:Ca")), MalformedResponse),
        (httpx.Response(200, content=b'{"not": "xml"}'), MalformedResponse),
        (ok("<ce:SomethingElse/>"), MalformedResponse),
    ],
)
async def test_answers_are_classified(adapter, ce, answer, expected) -> None:
    ce.post(ENDPOINT).mock(return_value=answer)
    error = await raised(adapter.create(order()), expected)
    assert not (expected is Permanent and isinstance(error, Transient))


async def test_unknown_fault_codes_follow_the_soap_faultcode(adapter, ce) -> None:
    ce.post(ENDPOINT).mock(
        side_effect=[fault("NEW_CODE", "soap:Client"), fault("NEW_CODE", "soap:Server")]
    )
    await raised(adapter.create(order()), Permanent)
    await raised(adapter.create(order()), Transient)


async def test_429_carries_retry_after(adapter, ce) -> None:
    ce.post(ENDPOINT).mock(return_value=httpx.Response(429, headers={"Retry-After": "7"}))
    error = await raised(adapter.find_by_reference("hub-1"), Transient)
    assert error.retry_after == 7


async def test_billion_laughs_is_refused_without_expanding(adapter, ce) -> None:
    ce.post(ENDPOINT).mock(return_value=httpx.Response(200, content=billion_laughs()))
    started = time.perf_counter()
    error = await raised(adapter.create(order()), MalformedResponse)
    assert "DTD" in str(error) and time.perf_counter() - started < 1.0


async def test_an_entity_declared_after_whitespace_and_comments_is_still_refused(
    adapter, ce
) -> None:
    sneaky = b"  <!-- hi -->\n" + billion_laughs().split(b"?>", 1)[1]
    ce.post(ENDPOINT).mock(return_value=httpx.Response(200, content=sneaky))
    await raised(adapter.find_by_reference("hub-1"), MalformedResponse)


async def test_lost_answers_are_unknown_for_writes_and_transient_for_reads(adapter, ce) -> None:
    ce.post(ENDPOINT).mock(side_effect=httpx.ReadTimeout("slow"))
    await raised(adapter.create(order()), UnknownOutcome)
    await raised(adapter.find_by_reference("hub-1"), Transient)


async def test_connect_errors_are_retried_in_call_then_transient(adapter, ce) -> None:
    route = ce.post(ENDPOINT).mock(side_effect=httpx.ConnectError("refused"))
    await raised(adapter.create(order()), Transient)
    assert route.call_count == 3


async def test_cancel_twice_is_success_when_the_case_is_void(adapter, ce) -> None:
    ce.post(ENDPOINT).mock(
        side_effect=[
            fault("STATUS_TRANSITION_NOT_ALLOWED"),
            ok(f"<ce:GetCaseResponse>{case_xml(status='Void')}</ce:GetCaseResponse>"),
            fault("STATUS_TRANSITION_NOT_ALLOWED"),
            ok(
                f"<ce:GetCaseResponse>{case_xml(status='Closed - Compliance')}</ce:GetCaseResponse>"
            ),
        ]
    )
    await adapter.cancel("ENF26-00001", "duplicate")
    await raised(adapter.cancel("ENF26-00001", "duplicate"), Permanent)


async def test_attach_sends_the_evidence_base64(adapter, ce, tmp_path: Path) -> None:
    from hub.model import Attachment

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8jpeg")
    route = ce.post(ENDPOINT).mock(
        return_value=ok(
            "<ce:AttachDocumentResponse><ce:DocumentId>9</ce:DocumentId>"
            "</ce:AttachDocumentResponse>"
        )
    )
    evidence = Attachment(
        url=photo.as_uri(), content_type="image/jpeg", digest=Attachment.digest_of(b"\xff\xd8jpeg")
    )
    await adapter.attach("ENF26-00001", evidence)
    sent = etree.fromstring(route.calls.last.request.content)
    assert sent.findtext(f".//{{{NS}}}Content") == "/9hqcGVn"
    bad = evidence.model_copy(update={"digest": "sha256:00"})
    await raised(adapter.attach("ENF26-00001", bad), Permanent)


# --------------------------------------------------------------------------- logging


async def test_debug_logging_shows_neither_password_nor_requester_pii(
    adapter, ce, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("zeep", "zeep.transports", "httpx", "httpcore", "aiohttp"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    ce.post(ENDPOINT).mock(
        side_effect=[
            ok(f"<ce:CreateCaseResponse>{case_xml()}</ce:CreateCaseResponse>"),
            fault("AUTHENTICATION_FAILED", "wsse:FailedAuthentication"),
        ]
    )
    await adapter.create(order())
    await raised(adapter.create(order()), AuthFailed)
    assert PASSWORD not in caplog.text and PII not in caplog.text and "555-0100" not in caplog.text
