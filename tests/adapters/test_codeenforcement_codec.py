"""The compiled envelopes (adapters/codeenforcement/codec.py) against zeep itself: every
request byte for byte, every answer value for value, and every document outside the plain
shape handed to zeep whole. Plus what the client builds once and what it rebuilds."""

from __future__ import annotations

import logging
import shutil
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from lxml import etree
from pydantic import SecretStr
from zeep.helpers import serialize_object
from zeep.xsd.types.builtins import Date, DateTime

from adapters.codeenforcement import CodeEnforcementAdapter, CodeEnforcementConfig, codec
from adapters.codeenforcement.client import (
    NS,
    SOAP_ENV,
    WSDL_PATH,
    CaseServiceClient,
    _parser,
    load_service_description,
    parse_xml,
)
from hub.adapters import MalformedResponse, OutboundNote, Permanent
from hub.testing.simulators.codeenforcement import CodeEnforcementSimulator, S

TYPE = "Enforcement/Property Maintenance/Overgrown Lot/NA"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
OPERATIONS = (
    "CreateCase",
    "FindCaseByReference",
    "GetCase",
    "GetCasesChangedSince",
    "AddNote",
    "CancelCase",
    "AttachDocument",
)


def make_client(password: str = "pw-1", username: str = "hub") -> CaseServiceClient:
    return CaseServiceClient(
        endpoint="http://ce.test/services/CaseService",
        username=username,
        password=SecretStr(password),
        timeout=2,
    )


@pytest.fixture(scope="module")
def description():
    return load_service_description()


@pytest.fixture
def client(description) -> CaseServiceClient:
    return make_client()


def soap(body: etree._Element) -> bytes:
    return etree.tostring(S.Envelope(S.Body(body)), xml_declaration=True, encoding="utf-8")


def zeep_reply(client: CaseServiceClient, description, operation: str, raw: bytes) -> Any:
    """What zeep alone makes of an answer: the adapter's path before the plans."""
    binding = client.bound(description).operation(operation).binding
    return serialize_object(binding.process_reply(parse_xml(raw)), target_cls=dict)


def fast_reply(client: CaseServiceClient, description, operation: str, raw: bytes) -> Any:
    reader = client.bound(description).operation(operation).reader
    assert reader is not None, f"{operation} has no compiled reader"
    return reader.read(parse_xml(raw))


# --------------------------------------------------------------------------- answers


@pytest.fixture(scope="module")
def answers() -> dict[str, list[bytes]]:
    """Every operation's answers from the simulator, over a case's whole life: received,
    scheduled, inspected with a violation cited, closed with photos, voided, reopened."""
    sim = CodeEnforcementSimulator()
    created = []
    for n in range(12):
        case = {"RecordType": TYPE, "ExternalReference": f"hub-{n}", "Priority": "High"}
        case["Address"] = {"StreetAddress": f"{n} Main St"}
        if n % 2:
            case["Description"] = "Weeds <over> two feet & rising"
        created.append(soap(sim.create_case({"Case": case})))
    ids = list(sim.records)
    sim.advance(4, case_ids=ids[:8])  # Assigned
    for _ in range(4):  # → Inspected - Violation (and on, for the first four)
        sim.advance(8, case_ids=ids[:8])
    sim.advance(3, close=True, case_ids=ids[:3])
    sim.advance(1, case_ids=ids[3:4], status="Closed - Duplicate")
    sim.advance(1, case_ids=ids[:1], status="Reopened")
    notes = [soap(sim.add_note({"CaseId": i, "Text": "called again"})) for i in ids[:2]]
    attached = soap(sim.attach_document({"CaseId": ids[5], "Content": "/9j/4A==", "FileName": "a"}))
    cancelled = soap(sim.cancel_case({"CaseId": ids[6], "Reason": "duplicate"}))
    since = "2000-01-01T00:00:00"
    return {
        "CreateCase": created,
        "FindCaseByReference": [
            soap(sim.find_case_by_reference({"ExternalReference": r}))
            for r in ("hub-0", "hub-3", "hub-7", "nobody")
        ],
        "GetCase": [soap(sim.get_case({"CaseId": i})) for i in ids],
        "GetCasesChangedSince": [
            soap(sim.get_cases_changed_since({"Since": since, "MaxResults": m}))
            for m in ("1", "5", "100")
        ]
        + [soap(sim.get_cases_changed_since({"Since": "2999-01-01T00:00:00"}))],
        "AddNote": notes,
        "CancelCase": [cancelled],
        "AttachDocument": [attached],
    }


def test_every_operation_has_a_compiled_writer_and_reader(client, description) -> None:
    bound = client.bound(description)
    for operation in OPERATIONS:
        assert bound.operation(operation).writer is not None, operation
        assert bound.operation(operation).reader is not None, operation


@pytest.mark.parametrize("operation", OPERATIONS)
def test_answers_read_exactly_as_zeep_reads_them(client, description, answers, operation) -> None:
    for raw in answers[operation]:
        fast = fast_reply(client, description, operation, raw)  # no Fallback: the fast path
        assert fast == zeep_reply(client, description, operation, raw)
        assert repr(fast) == repr(zeep_reply(client, description, operation, raw))  # types too


def test_the_answers_cover_what_the_adapter_reads(client, description, answers) -> None:
    page = fast_reply(
        client, description, "GetCasesChangedSince", answers["GetCasesChangedSince"][2]
    )
    cases = page["Case"]
    assert len(cases) == 12 and page["More"] is False
    assert {c["Status"] for c in cases} >= {"Received", "Inspected - Violation", "Void"}
    closed = [c for c in cases if c["ClosureCode"] in ("COMPLIED", "ABATED", "NO_VIOLATION")]
    assert closed and all(c["Documents"]["Document"] for c in closed)
    assert any(c["Violations"] for c in cases) and any(c["Inspections"] is None for c in cases)
    assert isinstance(cases[0]["StatusDate"], datetime)
    empty = fast_reply(
        client, description, "GetCasesChangedSince", answers["GetCasesChangedSince"][3]
    )
    assert empty == {"Case": [], "More": False}
    assert (
        fast_reply(client, description, "FindCaseByReference", answers["FindCaseByReference"][3])
        is None
    )
    assert isinstance(fast_reply(client, description, "AddNote", answers["AddNote"][0]), int)


def case_answer(*children: str, wrapper: str = "GetCaseResponse", case_attrs: str = "") -> bytes:
    body = "".join(children)
    return (
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}" xmlns:ce="{NS}" xmlns:xsi="{XSI}" '
        f'xmlns:xsd="http://www.w3.org/2001/XMLSchema"><soap:Body>'
        f"<ce:{wrapper}><ce:Case{case_attrs}>{body}</ce:Case></ce:{wrapper}>"
        "</soap:Body></soap:Envelope>"
    ).encode()


REQUIRED = (
    "<ce:CaseId>ENF26-00001</ce:CaseId>",
    f"<ce:RecordType>{TYPE}</ce:RecordType>",
    "<ce:Status>Received</ce:Status>",
    "<ce:StatusType>OPEN</ce:StatusType>",
    "<ce:StatusDate>2026-01-15T09:30:00.1234567</ce:StatusDate>",
    "<ce:OpenedDate>2026-01-15 09:30:00</ce:OpenedDate>",
)


@pytest.mark.parametrize(
    ("raw", "fast_path"),
    [
        (case_answer(*REQUIRED), True),  # 7 fraction digits, a space: zeep's own dates
        (case_answer(*REQUIRED, "<ce:Inspections/>"), True),  # empty: None
        (case_answer(*REQUIRED, "<ce:Inspections></ce:Inspections>", "<ce:Violations/>"), True),
        (case_answer(*REQUIRED[:2]), True),  # zeep stops where the children end
        (case_answer(*REQUIRED, "<ce:Priority>Someday</ce:Priority>"), True),  # no enum check
        (case_answer(*REQUIRED, "<ce:ClosedDate>yesterday</ce:ClosedDate>"), False),  # None
        (case_answer(*REQUIRED, "<ce:ClosedDate>0000-01-01T00:00:00</ce:ClosedDate>"), False),
        (case_answer(*REQUIRED, "<ce:ClosedDate> 2026-01-15T09:30:00 </ce:ClosedDate>"), True),
        (case_answer("<CaseId>unqualified</CaseId>", *REQUIRED[1:]), False),  # lenient match
        (
            case_answer(*REQUIRED).replace(
                b"<soap:Body>", b"<soap:Header><x/></soap:Header><soap:Body>"
            ),
            False,
        ),
        (case_answer(*REQUIRED, '<ce:Priority xsi:type="xsd:string">High</ce:Priority>'), False),
        (case_answer(*REQUIRED, case_attrs=' xsi:type="ce:CaseRecord"'), False),
        (case_answer(*REQUIRED, case_attrs=' note="x"'), True),  # attributes are ignored
        (case_answer(case_attrs=' note="x"'), False),  # ...unless they are all there is
        (case_answer(*REQUIRED, "<ce:Inspections note='x'/>"), False),
        (case_answer(*REQUIRED, wrapper="GetCasesChangedSinceResponse"), False),  # other tag
    ],
)
def test_documents_outside_the_plain_shape_are_zeeps(
    client, description, raw: bytes, fast_path: bool
) -> None:
    expected = zeep_reply(client, description, "GetCase", raw)
    if fast_path:
        assert fast_reply(client, description, "GetCase", raw) == expected
    else:
        with pytest.raises(codec.Fallback):
            fast_reply(client, description, "GetCase", raw)
    response = httpx.Response(200, content=raw)
    assert client.reply(description, "GetCase", response) == expected


@pytest.mark.parametrize(
    "raw",
    [
        case_answer(*REQUIRED[:2], "<ce:StatusType>OPEN</ce:StatusType>"),  # Status skipped
        case_answer(*reversed(REQUIRED)),
        case_answer(*REQUIRED, "<ce:Surprise>1</ce:Surprise>"),
        case_answer(*REQUIRED, REQUIRED[0]),  # CaseId twice
        case_answer(*REQUIRED, '<ce:Other xmlns:ce="urn:other">1</ce:Other>'),
        case_answer(*REQUIRED, "<CaseId>unqualified</CaseId>"),  # no later element takes it
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body/></soap:Envelope>'.encode(),
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}"/>'.encode(),
    ],
)
def test_documents_zeep_refuses_are_refused_the_same_way(client, description, raw: bytes) -> None:
    reader = client.bound(description).operation("GetCase").reader
    with pytest.raises(codec.Fallback):
        reader.read(parse_xml(raw))
    with pytest.raises(MalformedResponse, match="does not fit the WSDL"):
        client.reply(description, "GetCase", httpx.Response(200, content=raw))


def test_a_comment_node_goes_to_zeep(client, description) -> None:
    # The hardened parser drops comments; a tree that keeps one is zeep's to judge.
    envelope = etree.fromstring(case_answer(*REQUIRED))
    envelope.find(f".//{{{NS}}}Case").insert(1, etree.Comment("hi"))
    with pytest.raises(codec.Fallback):
        client.bound(description).operation("GetCase").reader.read(envelope)


def test_the_date_shortcut_gives_zeeps_values() -> None:
    zeep_datetime, zeep_date = DateTime().pythonvalue, Date().pythonvalue
    fast_datetime = codec._reader(DateTime())
    fast_date = codec._reader(Date())
    start = datetime(1, 1, 1)
    samples = ["0001-01-01T00:00:00", "9999-12-31T23:59:59.999999", "2026-03-08T02:30:00"]
    for n in range(3000):
        stamp = start + timedelta(days=n * 241.37, microseconds=n * 7919)
        for digits in (0, 1, 3, 6):
            text = f"{stamp.year:04d}-" + stamp.strftime("%m-%dT%H:%M:%S")  # %Y: no padding
            samples.append(text + ("." + f"{stamp.microsecond:06d}"[:digits] if digits else ""))
    for text in samples:
        assert repr(fast_datetime(text)) == repr(zeep_datetime(text)), text
        assert repr(fast_date(text[:10])) == repr(zeep_date(text[:10])), text
    for odd in (
        "2026-01-15T09:30:00Z",
        "2026-01-15T09:30:00+01:00",
        "2026-01-15",
        "2026-01-15 09:30:00",
    ):
        assert repr(fast_datetime(odd)) == repr(zeep_datetime(odd))  # zeep's tzinfo
    with pytest.raises(ValueError):
        fast_datetime("2026-02-30T00:00:00")  # zeep's (isodate's) error, not ours


# --------------------------------------------------------------------------- requests


class Tagged(str):
    """A str subclass (an enum member, a markup-safe string...): zeep's to render."""


def full_case(**extra: Any) -> dict[str, Any]:
    return {
        "RecordType": TYPE,
        "Description": 'Weeds <over> two feet & a "fence" ünïcode ✓ €',
        "ShortNotes": None,
        "ReportedDate": "2026-01-15T09:30:00",
        "ReportedChannel": "311",
        "Priority": "Medium",
        "AssignedToDepartment": "Property Maintenance",
        "Address": {
            "StreetAddress": "48 Dorchester Ave",
            "XCoordinate": -71.0589,
            "YCoordinate": 42.36,
        },
        "Contact": {"FirstName": "Jane", "LastName": None, "Email": "j@example.org"},
        "ExternalReference": "hub-1",
        **extra,
    }


REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("CreateCase", {"Case": full_case()}),
    (
        "CreateCase",
        {
            "Case": {
                "RecordType": TYPE,
                "Address": {"StreetAddress": "1 Main"},
                "ExternalReference": "h",
            }
        },
    ),
    ("CreateCase", {"Case": full_case(ReportedDate=datetime(2026, 1, 15, 9, 30, 0, 5))}),
    ("CreateCase", {"Case": full_case(Contact={})}),
    ("FindCaseByReference", {"ExternalReference": "hub-1"}),
    ("GetCase", {"CaseId": "ENF26-00001"}),
    ("GetCasesChangedSince", {"Since": datetime(2026, 1, 15, 9, 30), "MaxResults": 500}),
    ("GetCasesChangedSince", {"Since": datetime(2026, 1, 15, 9, 30, tzinfo=UTC)}),
    ("AddNote", {"CaseId": "ENF26-00001", "Text": "x", "Author": "311", "Public": True}),
    ("AddNote", {"CaseId": "ENF26-00001", "Text": "x", "Author": None, "Public": False}),
    ("CancelCase", {"CaseId": "ENF26-00001", "Reason": None}),
    ("CancelCase", {"CaseId": "ENF26-00001", "Reason": "duplicate"}),
    (
        "AttachDocument",
        {
            "CaseId": "E",
            "FileName": "a.jpg",
            "ContentType": "image/jpeg",
            "Content": b"\xff\xd8jpeg",
            "Comment": "Evidence from 311",
        },
    ),
]


@pytest.mark.parametrize(("operation", "params"), REQUESTS)
def test_requests_are_zeeps_bytes(client, description, operation: str, params: dict) -> None:
    bound = client.bound(description)
    assert bound.operation(operation).writer.write(params)  # no Fallback: the fast path
    fast, action = client.envelope(description, operation, params)
    assert fast == client._zeep_envelope(bound, operation, params)
    assert action == f"{NS}/{operation}"


@pytest.mark.parametrize(
    "case",
    [
        full_case(Priority=Tagged("High")),
        full_case(XCoordinate=None),  # unknown but None: zeep still refuses the name
        full_case(Address={"StreetAddress": "1 Main", "Unit": "2"}),
        full_case(Address=None),
        full_case(Address={"XCoordinate": 1.0}),  # required StreetAddress missing
        full_case(Address="48 Dorchester Ave"),
        full_case(Description=["a", "b"]),
        full_case(Description={"text": "a"}),
        full_case(Description="bad \x01 control character"),
    ],
)
def test_values_outside_the_plain_shape_are_zeeps(client, description, case: dict) -> None:
    bound = client.bound(description)
    with pytest.raises(codec.Fallback):
        bound.operation("CreateCase").writer.write({"Case": case})

    def outcome(build: Any) -> Any:
        try:
            return build()
        except Exception as exc:  # the very same error, or the very same bytes
            return (type(exc), str(exc))

    assert outcome(lambda: client.envelope(description, "CreateCase", {"Case": case})[0]) == (
        outcome(lambda: client._zeep_envelope(bound, "CreateCase", {"Case": case}))
    )


async def test_a_field_the_wsdl_lacks_is_still_named_and_nothing_is_sent() -> None:
    config = CodeEnforcementConfig(
        base_url="http://ce.test", username="hub", password=SecretStr("pw"), timeout_seconds=2
    )
    adapter = CodeEnforcementAdapter(config)
    with respx.mock(using="httpx", base_url="http://ce.test", assert_all_called=False) as mock:
        route = mock.post("/services/CaseService")
        with pytest.raises(Permanent, match="'Unit'"):
            await adapter.client.call(
                "CreateCase",
                Case=full_case(Address={"StreetAddress": "1", "Unit": "2"}),
                idempotent=False,
            )
        with pytest.raises(Permanent, match=r"invalid for the WSDL at CreateCase\.Case\.Address"):
            await adapter.client.call("CreateCase", Case=full_case(Address={}), idempotent=False)
        assert not route.called
    await adapter.aclose()


# --------------------------------------------------------------------------- built once


def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    calls: list[Any] = []
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


async def test_the_port_and_plans_are_built_once_per_adapter(monkeypatch, answers) -> None:
    import zeep

    binds = counting(monkeypatch, zeep.Client, "bind")
    writers = counting(monkeypatch, codec.RequestWriter, "compile")
    readers = counting(monkeypatch, codec.ReplyReader, "compile")
    frames = counting(monkeypatch, codec, "envelope_frame")
    monkeypatch.setattr("adapters.codeenforcement.client.envelope_frame", codec.envelope_frame)
    config = CodeEnforcementConfig(
        base_url="http://ce.test", username="hub", password=SecretStr("pw"), timeout_seconds=2
    )
    adapter = CodeEnforcementAdapter(config)
    with respx.mock(using="httpx", base_url="http://ce.test") as mock:
        mock.post("/services/CaseService").mock(
            side_effect=[httpx.Response(200, content=answers["AddNote"][0]) for _ in range(3)]
            + [httpx.Response(200, content=answers["GetCase"][0]) for _ in range(2)]
        )
        for _ in range(3):
            await adapter.add_note("ENF26-00001", OutboundNote(text="again"))
        await adapter.get_status(["ENF26-00001", "ENF26-00002"])
    await adapter.aclose()
    assert len(binds) == 1 and len(frames) == 1
    assert [a[0].name for a in writers] == [a[0].name for a in readers] == ["AddNote", "GetCase"]


def test_another_wsdl_gets_another_port_and_the_same_one_is_reused(
    client, description, tmp_path
) -> None:
    bound = client.bound(description)
    assert client.bound(description) is bound
    assert bound.operation("GetCase") is bound.operation("GetCase")
    for name in ("codeenforcement.wsdl", "codeenforcement.xsd"):
        shutil.copy(WSDL_PATH.parent / name, tmp_path / name)
    other = load_service_description(tmp_path / "codeenforcement.wsdl")
    assert other is not description
    rebound = client.bound(other)
    assert rebound is not bound and rebound.description is other
    assert rebound.operation("GetCase") is not bound.operation("GetCase")


def test_a_wsdl_changed_on_disk_is_parsed_anew(tmp_path) -> None:
    for name in ("codeenforcement.wsdl", "codeenforcement.xsd"):
        shutil.copy(WSDL_PATH.parent / name, tmp_path / name)
    wsdl = tmp_path / "codeenforcement.wsdl"
    first = load_service_description(wsdl)
    assert load_service_description(wsdl) is first
    wsdl.write_text(wsdl.read_text().replace("<wsdl:types>", "<!-- v2 -->\n<wsdl:types>"))
    second = load_service_description(wsdl)
    assert second is not first and load_service_description(wsdl) is second


async def test_each_adapter_signs_with_its_own_credentials(description) -> None:
    sent: list[etree._Element] = []
    for user, password in (("hub", "first-pw"), ("other", "second-pw")):
        config = CodeEnforcementConfig(
            base_url="http://ce.test",
            username=user,
            password=SecretStr(password),
            timeout_seconds=2,
        )
        adapter = CodeEnforcementAdapter(config)
        with respx.mock(using="httpx", base_url="http://ce.test") as mock:
            route = mock.post("/services/CaseService").mock(
                return_value=httpx.Response(
                    200, content=soap(etree.Element(f"{{{NS}}}FindCaseByReferenceResponse"))
                )
            )
            assert await adapter.find_by_reference("hub-1") is None
            sent.append(etree.fromstring(route.calls.last.request.content))
        await adapter.aclose()
    wsse = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd}"
    tokens = [(e.findtext(f".//{wsse}Username"), e.findtext(f".//{wsse}Password")) for e in sent]
    assert tokens == [("hub", "first-pw"), ("other", "second-pw")]
    assert description.wsse is None  # the shared WSDL object never holds a password


# --------------------------------------------------------------------------- the parser


def test_the_parser_is_reused_per_thread_and_stays_hardened() -> None:
    from hub.testing.simulators.codeenforcement import billion_laughs

    assert _parser() is _parser()
    other: list[etree.XMLParser] = []
    worker = threading.Thread(target=lambda: other.append(_parser()))
    worker.start()
    worker.join()
    assert other[0] is not _parser()
    with pytest.raises(etree.XMLSyntaxError):
        parse_xml(b"<a><b></a>")
    assert parse_xml(b"<a><b/></a>").tag == "a"  # a failed parse leaves nothing behind
    with pytest.raises(Exception, match="declaration refused"):
        parse_xml(billion_laughs())
    entity = b"<a>&ext;</a>"
    with pytest.raises(etree.XMLSyntaxError):
        parse_xml(entity)  # undeclared, never resolved


def test_zeep_logs_nothing_on_the_fast_path(client, description, answers, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="zeep")
    for operation in OPERATIONS:
        for raw in answers[operation]:
            client.reply(description, operation, httpx.Response(200, content=raw))
    assert not [r for r in caplog.records if r.name.startswith("zeep")]


def test_dates_in_answers_are_the_same_objects_zeep_gives(client, description) -> None:
    raw = case_answer(
        *REQUIRED[:4], "<ce:StatusDate>2026-01-15T09:30:00.25</ce:StatusDate>", REQUIRED[5]
    )
    fast = fast_reply(client, description, "GetCase", raw)
    assert fast["StatusDate"] == datetime(2026, 1, 15, 9, 30, 0, 250000)
    assert fast["OpenedDate"] == datetime(2026, 1, 15, 9, 30)
    assert fast == zeep_reply(client, description, "GetCase", raw)
    assert date(2026, 1, 15) == fast["StatusDate"].date()


# --------------------------------------------------------------------------- other shapes

SHAPES_WSDL = """<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:xsd="http://www.w3.org/2001/XMLSchema"
    xmlns:tns="urn:shapes" targetNamespace="urn:shapes">
  <wsdl:types>
    <xsd:schema targetNamespace="urn:shapes" elementFormDefault="qualified">
      <xsd:element name="Echo"><xsd:complexType><xsd:sequence>
        <xsd:element name="Text" type="xsd:string"/>
      </xsd:sequence></xsd:complexType></xsd:element>
      <xsd:element name="EchoResponse"><xsd:complexType><xsd:sequence>
        <xsd:element name="Wrapper" minOccurs="0"><xsd:complexType><xsd:sequence>
          <xsd:element name="Value" type="xsd:string"/>
        </xsd:sequence></xsd:complexType></xsd:element>
      </xsd:sequence></xsd:complexType></xsd:element>
      <xsd:element name="PairResponse"><xsd:complexType><xsd:sequence>
        <xsd:element name="Item" type="xsd:int" minOccurs="0" maxOccurs="2"/>
      </xsd:sequence></xsd:complexType></xsd:element>
      <xsd:element name="PickResponse"><xsd:complexType><xsd:choice>
        <xsd:element name="A" type="xsd:string"/><xsd:element name="B" type="xsd:string"/>
      </xsd:choice></xsd:complexType></xsd:element>
    </xsd:schema>
  </wsdl:types>
  <wsdl:message name="EchoIn"><wsdl:part name="p" element="tns:Echo"/></wsdl:message>
  <wsdl:message name="EchoOut"><wsdl:part name="p" element="tns:EchoResponse"/></wsdl:message>
  <wsdl:message name="PairOut"><wsdl:part name="p" element="tns:PairResponse"/></wsdl:message>
  <wsdl:message name="PickOut"><wsdl:part name="p" element="tns:PickResponse"/></wsdl:message>
  <wsdl:portType name="Shapes">
    <wsdl:operation name="Echo"><wsdl:input message="tns:EchoIn"/>
      <wsdl:output message="tns:EchoOut"/></wsdl:operation>
    <wsdl:operation name="Pair"><wsdl:input message="tns:EchoIn"/>
      <wsdl:output message="tns:PairOut"/></wsdl:operation>
    <wsdl:operation name="Pick"><wsdl:input message="tns:EchoIn"/>
      <wsdl:output message="tns:PickOut"/></wsdl:operation>
  </wsdl:portType>
  <wsdl:binding name="ShapesBinding" type="tns:Shapes">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="Echo"><soap:operation soapAction="urn:shapes/Echo"/>
      <wsdl:input><soap:body use="literal"/></wsdl:input>
      <wsdl:output><soap:body use="literal"/></wsdl:output></wsdl:operation>
    <wsdl:operation name="Pair"><soap:operation soapAction="urn:shapes/Pair"/>
      <wsdl:input><soap:body use="literal"/></wsdl:input>
      <wsdl:output><soap:body use="literal"/></wsdl:output></wsdl:operation>
    <wsdl:operation name="Pick"><soap:operation soapAction="urn:shapes/Pick"/>
      <wsdl:input><soap:body use="literal"/></wsdl:input>
      <wsdl:output><soap:body use="literal"/></wsdl:output></wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="CaseService">
    <wsdl:port name="CaseServicePort" binding="tns:ShapesBinding">
      <soap:address location="http://localhost/shapes"/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"""


def shapes_answer(body: str) -> bytes:
    return (
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}" xmlns:s="urn:shapes"><soap:Body>{body}'
        "</soap:Body></soap:Envelope>"
    ).encode()


@pytest.mark.parametrize(
    ("operation", "body", "fast_path"),
    [
        # one complex child with one element of its own: zeep unwraps twice
        (
            "Echo",
            "<s:EchoResponse><s:Wrapper><s:Value>hi</s:Value></s:Wrapper></s:EchoResponse>",
            True,
        ),
        ("Echo", "<s:EchoResponse><s:Wrapper/></s:EchoResponse>", True),
        ("Echo", "<s:EchoResponse/>", True),
        ("Pair", "<s:PairResponse/>", True),
        ("Pair", "<s:PairResponse><s:Item>1</s:Item></s:PairResponse>", True),
        ("Pair", "<s:PairResponse><s:Item>1</s:Item><s:Item> 2 </s:Item></s:PairResponse>", True),
    ],
)
def test_other_shapes_read_as_zeep_reads_them(tmp_path, operation, body, fast_path) -> None:
    (tmp_path / "shapes.wsdl").write_text(SHAPES_WSDL)
    description = load_service_description(tmp_path / "shapes.wsdl")
    client = make_client()
    raw = shapes_answer(body)
    assert fast_reply(client, description, operation, raw) == zeep_reply(
        client, description, operation, raw
    )


def test_other_shapes_beyond_a_plan_are_zeeps(tmp_path) -> None:
    (tmp_path / "shapes.wsdl").write_text(SHAPES_WSDL)
    description = load_service_description(tmp_path / "shapes.wsdl")
    client = make_client()
    bound = client.bound(description)
    assert bound.operation("Pick").reader is None  # a choice: zeep reads it
    raw = shapes_answer("<s:PickResponse><s:B>b</s:B></s:PickResponse>")
    assert client.reply(description, "Pick", httpx.Response(200, content=raw)) == {
        "B": "b",
        "A": None,
    }
    three = "<s:Item>1</s:Item>" * 3  # maxOccurs=2: zeep leaves one over and refuses it
    with pytest.raises(codec.Fallback):
        bound.operation("Pair").reader.read(
            parse_xml(shapes_answer(f"<s:PairResponse>{three}</s:PairResponse>"))
        )
    fast, action = client.envelope(description, "Echo", {"Text": "hi & bye"})
    assert fast == client._zeep_envelope(bound, "Echo", {"Text": "hi & bye"})
    assert action == "urn:shapes/Echo"


def test_a_soap_12_binding_gets_its_own_envelope(tmp_path) -> None:
    soap12 = SHAPES_WSDL.replace(
        "http://schemas.xmlsoap.org/wsdl/soap/", "http://schemas.xmlsoap.org/wsdl/soap12/"
    )
    (tmp_path / "shapes12.wsdl").write_text(soap12)
    description = load_service_description(tmp_path / "shapes12.wsdl")
    client = make_client()
    bound = client.bound(description)
    assert bound.operation("Echo").writer.soap_env == "http://www.w3.org/2003/05/soap-envelope"
    fast, _ = client.envelope(description, "Echo", {"Text": "hi"})
    assert fast == client._zeep_envelope(bound, "Echo", {"Text": "hi"})
    assert b"http://www.w3.org/2003/05/soap-envelope" in fast
