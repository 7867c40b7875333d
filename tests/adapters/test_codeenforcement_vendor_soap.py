"""Real vendor SOAP material, read in place from shared/realworld (never copied, and no
address in it is ever called): the IBM Maximo WSDL drives zeep the way our own WSDL does,
and real Bartec/Symology answers show the parser survives their quirks or classifies them."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
from lxml import etree
from pydantic import SecretStr

from adapters.codeenforcement import CodeEnforcementAdapter, CodeEnforcementConfig
from adapters.codeenforcement.client import (
    SOAP_ENV,
    XSI,
    load_service_description,
    parse_department_datetime,
    parse_xml,
)
from hub.adapters import MalformedResponse
from hub.testing.generator import find_realworld_dir

VENDOR = (find_realworld_dir() or Path("/nonexistent")) / "vendor"
MAXIMO_WSDL = VENDOR / "wsdl" / "maximo_MXISWOCHANGE.wsdl"
BARTEC, SYMOLOGY = VENDOR / "bartec", VENDOR / "symology"
MX = "http://www.ibm.com/maximo"
LONDON = ZoneInfo("Europe/London")  # Bartec and Symology captures are UK council systems


@pytest.fixture(autouse=True)
def vendor_data() -> None:
    # shared/ always sits beside the repository (CI included): missing data is a failure.
    assert VENDOR.is_dir(), f"{VENDOR} not available: the vendor captures are read in place"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails the test (the Maximo address is private)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# --------------------------------------------------------------------------- Maximo WSDL


def test_maximo_wsdl_builds_a_work_order_create_without_calling_its_address(no_network) -> None:
    client = load_service_description(MAXIMO_WSDL)  # strict, local-only, no DTD/entities
    service = client.bind("MXISWOCHANGE", "MXISWOCHANGESOAP11Port")
    assert service._binding_options["address"].startswith("https://146.89.")  # never used
    envelope = client.create_message(
        service,
        "CreateMXISWOCHANGE",
        MXISWOCHANGESet={
            "WOCHANGE": [
                {
                    "SITEID": "BEDFORD",
                    "DESCRIPTION": "Overgrown lot at 48 Dorchester Ave",
                    "STATUS": "WAPPR",
                    "REPORTDATE": datetime(2026, 1, 15, 9, 30),
                }
            ]
        },
        maximoVersion="7.6",
    )
    body = envelope.find(f"{{{SOAP_ENV}}}Body/{{{MX}}}CreateMXISWOCHANGE")
    assert body is not None and body.get("maximoVersion") == "7.6"
    order = body.find(f"{{{MX}}}MXISWOCHANGESet/{{{MX}}}WOCHANGE")
    assert order.findtext(f"{{{MX}}}SITEID") == "BEDFORD"
    assert order.findtext(f"{{{MX}}}STATUS") == "WAPPR"  # Maximo's "waiting approval"
    # XSD order, not call order: DESCRIPTION precedes REPORTDATE precedes SITEID.
    names = [etree.QName(c).localname for c in order]
    assert names.index("DESCRIPTION") < names.index("REPORTDATE") < names.index("SITEID")
    operations = set(service._binding._operations)
    assert {"CreateMXISWOCHANGE", "QueryMXISWOCHANGE", "SyncMXISWOCHANGE"} <= operations


def test_maximo_wsdl_refuses_a_field_it_does_not_have(no_network) -> None:
    client = load_service_description(MAXIMO_WSDL)
    service = client.bind("MXISWOCHANGE", "MXISWOCHANGESOAP11Port")
    with pytest.raises(TypeError, match="NOT_A_FIELD"):
        client.create_message(
            service, "CreateMXISWOCHANGE", MXISWOCHANGESet={"WOCHANGE": [{"NOT_A_FIELD": "x"}]}
        )


# --------------------------------------------------------------------------- Bartec


def test_bartec_undeclared_xsi_prefix_is_refused_strictly_and_recovered_on_request() -> None:
    raw = (BARTEC / "servicerequests_get_SR1.xml").read_bytes()
    with pytest.raises(etree.XMLSyntaxError, match="xsi"):
        parse_xml(raw)
    root = parse_xml(raw, recover_prefixes=True)
    nils = [e for e in root.iter() if e.get(f"{{{XSI}}}nil") == "true"]
    assert nils and all(etree.QName(e).localname.endswith("ID") for e in nils)
    assert root.findtext(".//{http://www.bartec-systems.com}ServiceCode") == "SR1"


def test_only_well_known_prefixes_are_forgiven() -> None:
    with pytest.raises(etree.XMLSyntaxError):
        parse_xml(b"<a><evil:b/></a>", recover_prefixes=True)


@pytest.mark.parametrize("name", ["servicerequest_create.xml", "servicerequest_create_error.xml"])
def test_bartec_create_answers_parse_and_their_error_block_is_readable(name: str) -> None:
    root = parse_xml((BARTEC / name).read_bytes())
    result = root.findtext(".//{http://www.bartec-systems.com}Result")
    if "error" in name:
        assert result == "1"  # Bartec reports a refused create inside a 200 answer
        assert "UPRN" in root.findtext(".//{http://www.bartec-systems.com}Message")
    else:
        assert result is None and root.findtext(".//{*}ServiceCode") == "0001"


def test_bartec_dates_millisecond_fractions_and_the_net_min_value() -> None:
    root = parse_xml((BARTEC / "servicerequests_updates_get_20200622.xml").read_bytes())
    changed = root.findtext(".//{*}DateChanged")
    added = root.findtext(".//{*}DateAdded")
    assert changed == "2020-06-24T16:17:00.007" and added == "0001-01-01T00:00:00"
    # British Summer Time: 16:17 local is 15:17 UTC.
    assert parse_department_datetime(changed, LONDON) == datetime(
        2020, 6, 24, 15, 17, 0, 7000, tzinfo=UTC
    )
    assert parse_department_datetime(added, LONDON) is None  # "no date", not year 1


def test_every_bartec_date_parses() -> None:
    for path in sorted(BARTEC.glob("*.xml")):
        root = parse_xml(path.read_bytes(), recover_prefixes=True)
        for element in root.iter():
            name = etree.QName(element).localname if isinstance(element.tag, str) else ""
            if name.startswith("Date") and (element.text or "").strip():
                parsed = parse_department_datetime(element.text, LONDON)
                assert parsed is None or parsed.tzinfo is UTC, (path.name, element.text)
                assert parsed is not None or element.text.startswith("0001"), (
                    path.name,
                    element.text,
                )


# --------------------------------------------------------------------------- Symology


def test_symology_split_date_and_time_fields() -> None:
    root = parse_xml((SYMOLOGY / "brent_GetRequestResult.xml").read_bytes())
    request = root.find("Request")
    recorded = parse_department_datetime(
        request.findtext("RecordedDate"), LONDON, time_of_day=request.findtext("RecordedTime")
    )
    assert recorded == datetime(2018, 11, 28, 15, 5, tzinfo=UTC)  # GMT in November
    history = [
        parse_department_datetime(
            h.findtext("HistoryDate"), LONDON, time_of_day=h.findtext("HistoryTime")
        )
        for h in request.iter("EventHistoryGet")
    ]
    assert history and all(h is not None for h in history)
    assert history == sorted(history)
    empty = request.find("Customers/CustomerGet")
    assert parse_department_datetime(empty.findtext("InitialDate"), LONDON) is None


def test_us_and_dotnet_formats() -> None:
    ny = ZoneInfo("America/New_York")
    assert parse_department_datetime("01/15/2026 09:30:00", ny) == datetime(
        2026, 1, 15, 14, 30, tzinfo=UTC
    )
    assert parse_department_datetime("1/15/2026 9:30:00 AM", ny) == datetime(
        2026, 1, 15, 14, 30, tzinfo=UTC
    )
    assert parse_department_datetime("2026-01-15 09:30:00.1234567", ny).microsecond == 123456
    assert parse_department_datetime("2026-01-15T09:30:00Z", ny).hour == 9
    assert parse_department_datetime("yesterday", ny) is None


# --------------------------------------------------------------------------- through the adapter


@pytest.mark.parametrize(
    "name", ["servicerequests_get_SR1.xml", "servicerequests_updates_get_20200622.xml"]
)
async def test_a_foreign_vendor_answer_is_classified_malformed_not_crashed(name: str) -> None:
    """A Bartec body in a SOAP envelope where our service's answer was expected (a
    misrouted endpoint): strict parsing or the WSDL refuse it, cleanly classified."""
    fragment = (BARTEC / name).read_bytes()
    body = f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body>'.encode() + fragment
    body += b"</soap:Body></soap:Envelope>"
    config = CodeEnforcementConfig(
        base_url="http://ce.test", username="hub", password=SecretStr("pw"), timeout_seconds=2
    )
    adapter = CodeEnforcementAdapter(config)
    with respx.mock(using="httpx", base_url="http://ce.test") as mock:
        mock.post("/services/CaseService").mock(return_value=httpx.Response(200, content=body))
        with pytest.raises(MalformedResponse):
            await adapter.find_by_reference("hub-1")
    await adapter.aclose()


def test_the_real_files_were_read_in_place() -> None:
    assert Path(__file__).resolve().parents[2] not in MAXIMO_WSDL.resolve().parents
