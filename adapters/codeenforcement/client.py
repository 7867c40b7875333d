"""The code-enforcement case service's wire format: SOAP 1.1 envelopes described by the WSDL
shipped in this package, and the classification of every failure into the hub's errors.

How a call runs (and why):

- The WSDL is parsed once per process (and version of the file) from the package
  (``load_service_description``), by a zeep transport that refuses to fetch anything over
  the network, in a worker thread the first time it is needed: zeep's loader is synchronous
  and must not stall the event loop.
- Each client binds the port once (``BoundService``): per operation zeep's binding, its
  SOAPAction and the plans compiled from zeep's reading of the XSD (``codec``), plus the
  envelope bytes around every body with this adapter's WS-Security UsernameToken (applied
  per adapter, never on the shared WSDL object).
- The request body is written by the operation's plan, byte for byte what zeep's
  ``create_message`` makes; any value outside the plan (a field the WSDL lacks, a missing
  required element, an unusual type) goes to zeep, which builds or refuses it as before.
- The hub's own HTTP client (``make_async_client``: httpx over aiohttp) posts it. zeep's
  transports are never used, so zeep's DEBUG transport log (full envelopes, password
  included) never sees our traffic.
- The answer is parsed by a hardened lxml parser (no DTD, no entity resolution, no network,
  no huge trees; any DOCTYPE is refused before parsing), then read by the operation's plan
  into the dicts zeep's ``process_reply`` + ``serialize_object`` give; a document outside
  the plan (xsi:type, a lenient match, anything zeep refuses) is zeep's to read or refuse.

Error messages name the operation, HTTP status and fault code only: never the password,
the envelope or anything from the payload (requester PII).
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import httpx
import zeep
import zeep.exceptions
from lxml import etree
from pydantic import SecretStr
from zeep.helpers import serialize_object
from zeep.wsse.username import UsernameToken

from adapters.codeenforcement.codec import Fallback, ReplyReader, RequestWriter, envelope_frame
from hub.adapters import (
    AuthFailed,
    MalformedResponse,
    Permanent,
    Transient,
    parse_retry_after,
)
from hub.transports.http import make_async_client, send_classified

NS = "urn:city:code-enforcement:cases:v1"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
WSDL_PATH = Path(__file__).resolve().parent / "wsdl" / "codeenforcement.wsdl"
SERVICE, PORT = "CaseService", "CaseServicePort"

# zeep parses the WSDL strictly and refuses DTDs, entities and external references.
ZEEP_SETTINGS = zeep.Settings(
    strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True, xml_huge_tree=False
)

# CaseServiceFault codes: what each means for the hub.
AUTH_CODES = frozenset({"AUTHENTICATION_FAILED", "NOT_AUTHORIZED"})
PERMANENT_CODES = frozenset(
    {
        "VALIDATION_ERROR",
        "INVALID_RECORD_TYPE",
        "CASE_NOT_FOUND",
        "STATUS_TRANSITION_NOT_ALLOWED",
        "DOCUMENT_REJECTED",
        # An agency script (Accela EMSE "before" event) refused the record and rolled back:
        # the same payload fails the same way, so a human must look (dead letter, replay).
        "EMSE_SCRIPT_ERROR",
    }
)
TRANSIENT_CODES = frozenset({"DATABASE_DEADLOCK", "SERVICE_UNAVAILABLE"})
# faultcode local names of WS-Security failures (OASIS WSS 1.0 §12).
WSSE_AUTH_FAULTS = frozenset({"FailedAuthentication", "InvalidSecurityToken", "InvalidSecurity"})
# Well-known prefixes a vendor fragment may use without declaring them (Bartec's `xsi:nil`).
KNOWN_PREFIXES = {"xsi": XSI, "xsd": "http://www.w3.org/2001/XMLSchema", "soap": SOAP_ENV}
UNDECLARED_PREFIX = re.compile(r"Namespace prefix (\w+)(?: for \S+)? on \S+ is not defined")


# --------------------------------------------------------------------------- errors


class CaseRefused(Permanent):
    """A fault retrying cannot fix; `code` lets callers special-case one."""

    def __init__(self, message: str, *, code: str | None) -> None:
        super().__init__(message, status_code=500)
        self.code = code


class XmlRefused(ValueError):
    """The document declares a DTD or entities (e.g. billion laughs): never parsed further."""


@dataclass(frozen=True)
class SoapFault:
    faultcode: str  # local name: Client, Server, FailedAuthentication...
    detail_code: str | None
    retryable: bool | None


# --------------------------------------------------------------------------- WSDL


class LocalOnlyTransport(zeep.Transport):
    """zeep transport for loading WSDL/XSD files: local paths only, never the network."""

    def load(self, url: str) -> bytes:
        if urlparse(url).scheme.lower() in ("http", "https", "ftp"):
            raise zeep.exceptions.TransportError(f"refusing to fetch {url!r}: local files only")
        return super().load(url)


def load_service_description(path: Path = WSDL_PATH) -> zeep.Client:
    """Parse a WSDL (and the XSDs it imports) once per process and version of the file: a
    WSDL replaced on disk (another size or modification time) is parsed anew for the
    clients created after it. Blocking: call it from a worker thread or at start-up, never
    inside the event loop."""
    stat = Path(path).stat()
    return _load_description(Path(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load_description(path: Path, mtime_ns: int, size: int) -> zeep.Client:
    return zeep.Client(str(path), transport=LocalOnlyTransport(), settings=ZEEP_SETTINGS)


# --------------------------------------------------------------------------- XML


_PARSERS = threading.local()


def _parser(*, recover: bool = False) -> etree.XMLParser:
    """The hardened parser of this thread: lxml parsers are not thread-safe, and building
    one per document cost more than parsing a small answer with it."""
    name = "recovering" if recover else "strict"
    parser = getattr(_PARSERS, name, None)
    if parser is None:
        parser = _new_parser(recover=recover)
        setattr(_PARSERS, name, parser)
    return parser


def _new_parser(*, recover: bool) -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        recover=recover,
    )


def _prolog_declares_dtd(content: bytes) -> bool:
    """True if anything before the root element declares a DTD or entities."""
    root = re.search(rb"<(?![?!])", content)
    prolog = (content if root is None else content[: root.start()]).upper()
    return b"<!DOCTYPE" in prolog or b"<!ENTITY" in prolog


def parse_xml(content: bytes, *, recover_prefixes: bool = False) -> etree._Element:
    """Parse an answer safely. Raises XmlRefused for any DTD/entity declaration (checked
    before and after parsing) and etree.XMLSyntaxError for broken XML.

    `recover_prefixes`: a body fragment using well-known prefixes (xsi, xsd, soap) without
    declaring them is re-parsed inside a wrapper that declares them; nothing else is
    forgiven."""
    if _prolog_declares_dtd(content):
        raise XmlRefused("document type declaration refused")
    try:
        root = etree.fromstring(content, _parser())
    except etree.XMLSyntaxError as exc:
        undeclared = set(UNDECLARED_PREFIX.findall(str(exc)))
        if not (recover_prefixes and undeclared and undeclared <= set(KNOWN_PREFIXES)):
            raise
        root = _reparse_with_prefixes(content)
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise XmlRefused("document type declaration refused")
    return root


def _reparse_with_prefixes(content: bytes) -> etree._Element:
    body = re.sub(rb"^\s*<\?xml[^>]*\?>", b"", content)
    declarations = b" ".join(
        b'xmlns:%s="%s"' % (p.encode(), u.encode()) for p, u in KNOWN_PREFIXES.items()
    )
    wrapper = etree.fromstring(b"<wrapper " + declarations + b">" + body + b"</wrapper>", _parser())
    children = list(wrapper)
    if len(children) != 1:
        raise etree.XMLSyntaxError("not a single document", None, 0, 0)
    return children[0]


def find_fault(envelope: etree._Element) -> SoapFault | None:
    fault = envelope.find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    if fault is None:
        return None
    faultcode = (fault.findtext("faultcode") or "").strip()
    local = faultcode.rsplit(":", 1)[-1]
    detail = fault.find(f"detail/{{{NS}}}CaseServiceFault")
    code = retryable = None
    if detail is not None:
        code = (detail.findtext(f"{{{NS}}}Code") or "").strip() or None
        flag = (detail.findtext(f"{{{NS}}}Retryable") or "").strip().lower()
        retryable = {"true": True, "1": True, "false": False, "0": False}.get(flag)
    return SoapFault(faultcode=local, detail_code=code, retryable=retryable)


# --------------------------------------------------------------------------- dates


NET_MIN_DATE = "0001-01-01"  # .NET DateTime.MinValue: how some vendors write "no date"
US_FORMATS = ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M", "%m/%d/%Y")


def parse_department_datetime(
    value: Any, zone: ZoneInfo, *, time_of_day: str | None = None
) -> datetime | None:
    """A department timestamp as aware UTC. Naive values are the install's local time.

    Survives what real case systems send: ISO with a space or ``T``, 1-7 fractional digits
    (.NET), ``Z``/offsets, date and time in separate fields (Symology ``RecordedDate`` +
    ``RecordedTime``), US ``MM/DD/YYYY`` forms, and ``0001-01-01T00:00:00`` meaning none.
    Unreadable → None (the caller decides whether that is malformed)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime.combine(value, _time(time_of_day))
    else:
        text = str(value).strip()
        if time_of_day and len(text) == 10:
            text = f"{text}T{time_of_day.strip()}"
        parsed = _parse_text(text)
        if parsed is None:
            return None
    if parsed.year == 1:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)  # ambiguous DST hour: first occurrence
    return parsed.astimezone(UTC)


def _time(text: str | None) -> time:
    try:
        return time.fromisoformat(text.strip()) if text else time()
    except ValueError:
        return time()


def _parse_text(text: str) -> datetime | None:
    if text.startswith(NET_MIN_DATE):
        return datetime(1, 1, 1)
    iso = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))  # 7-digit .NET ticks
    try:
        return datetime.fromisoformat(iso)
    except ValueError:
        pass
    for fmt in US_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def utc_to_local(value: datetime, zone: ZoneInfo) -> datetime:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)  # hub convention: naive = UTC
    return aware.astimezone(zone).replace(tzinfo=None)


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class BoundOperation:
    """One operation of the bound port: zeep's binding operation, its SOAPAction, and its
    compiled writer and reader (None where zeep must do it all)."""

    binding: Any
    action: str
    writer: RequestWriter | None
    reader: ReplyReader | None


class BoundService:
    """What a client derives from one parsed WSDL, once: zeep's service proxy for our port,
    each operation's compiled plans (on first use) and the envelope bytes around every
    request body, WS-Security header included (so it holds the client's credentials)."""

    def __init__(self, description: zeep.Client, security: UsernameToken) -> None:
        self.description = description
        self.proxy = description.bind(SERVICE, PORT)
        self.security = security
        self._frames: dict[str, tuple[bytes, bytes]] = {}
        self._operations: dict[str, BoundOperation] = {}

    def frame(self, soap_env: str) -> tuple[bytes, bytes]:
        """The bytes before and after a request body, with this client's UsernameToken."""
        frame = self._frames.get(soap_env)
        if frame is None:
            frame = envelope_frame(soap_env, lambda e: self.security.apply(e, {}))
            self._frames[soap_env] = frame
        return frame

    def operation(self, name: str) -> BoundOperation:
        bound = self._operations.get(name)
        if bound is None:
            binding = self.proxy._binding.get(name)  # ValueError for an unknown operation
            bound = BoundOperation(
                binding=binding,
                action=binding.soapaction or "",
                writer=RequestWriter.compile(binding, self.description),
                reader=ReplyReader.compile(binding, self.description.settings),
            )
            self._operations[name] = bound
        return bound


class CaseServiceClient:
    """One per adapter: the shared parsed WSDL, this department's credentials and endpoint,
    and an HTTP client created lazily inside the running loop."""

    def __init__(
        self,
        *,
        endpoint: str,
        username: str,
        password: SecretStr,
        timeout: float,
        label: str = "codeenforcement",
        wsdl_path: Path = WSDL_PATH,
    ) -> None:
        self.endpoint = endpoint
        self.label = label
        self._username = username
        self._password = password
        self._timeout = timeout
        self._wsdl_path = wsdl_path
        self._zeep: zeep.Client | None = None
        self._bound: BoundService | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = make_async_client(timeout=self._timeout)
        return self._http

    async def description(self) -> zeep.Client:
        if self._zeep is None:
            self._zeep = await asyncio.to_thread(load_service_description, self._wsdl_path)
        return self._zeep

    def bound(self, description: zeep.Client) -> BoundService:
        """The port and plans for `description`, built once per client and WSDL."""
        if self._bound is None or self._bound.description is not description:
            token = UsernameToken(self._username, self._password.get_secret_value())
            self._bound = BoundService(description, token)
        return self._bound

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- calls --------------------------------------------------------------------

    async def call(self, operation: str, *, idempotent: bool, **params: Any) -> Any:
        """Run one operation; return its result as plain dicts/lists, or raise a classified
        error. `idempotent`: a lost answer to a read is Transient, to a write UnknownOutcome."""
        description = await self.description()
        body, action = self.envelope(description, operation, params)
        headers = {"Content-Type": 'text/xml; charset="utf-8"', "SOAPAction": f'"{action}"'}
        response = await self._send(
            operation,
            idempotent=idempotent,
            request=lambda: self.http.post(self.endpoint, content=body, headers=headers),
        )
        return self.reply(description, operation, response)

    def envelope(
        self, description: zeep.Client, operation: str, params: dict[str, Any]
    ) -> tuple[bytes, str]:
        bound = self.bound(description)
        called = bound.operation(operation)
        writer = called.writer
        if writer is not None:
            try:
                body = writer.write(params)
            except Fallback:
                pass  # zeep builds it, or names what is wrong with it
            else:
                before, after = bound.frame(writer.soap_env)
                return before + body + after, called.action
        return self._zeep_envelope(bound, operation, params), called.action

    def _zeep_envelope(self, bound: BoundService, operation: str, params: dict[str, Any]) -> bytes:
        description = bound.description
        try:
            envelope = description.create_message(bound.proxy, operation, **params)
        except TypeError as exc:  # an element the WSDL does not have: name it, not its value
            field = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
            where = field.group(1) if field else "?"
            raise Permanent(f"{self.label} {operation}: no element {where!r} in the WSDL") from None
        except zeep.exceptions.ValidationError as exc:
            path = ".".join(map(str, getattr(exc, "path", None) or [])) or "?"
            raise Permanent(f"{self.label} {operation}: invalid for the WSDL at {path}") from None
        envelope, _ = bound.security.apply(envelope, {})
        return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")

    async def _send(self, operation: str, *, idempotent: bool, request: Any) -> httpx.Response:
        return await send_classified(
            request, label=f"{self.label} {operation}", idempotent=idempotent
        )

    # -- classification -----------------------------------------------------------

    def reply(self, description: zeep.Client, operation: str, response: httpx.Response) -> Any:
        status = response.status_code
        where = f"{self.label} {operation}: HTTP {status}"
        if status in (401, 403):
            raise AuthFailed(where, status_code=status)
        if status in (408, 429) or status in (502, 503, 504):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise Transient(where, retry_after=retry_after, status_code=status)
        if status not in (200, 500):
            error = Transient if status > 500 else Permanent
            raise error(where, status_code=status)
        envelope = self._envelope(where, response)
        fault = find_fault(envelope)
        if fault is not None:
            raise self.classify_fault(operation, fault)
        if status != 200:
            raise Transient(f"{where} without a SOAP Fault", status_code=status)
        return self._deserialize(description, operation, envelope)

    def _envelope(self, where: str, response: httpx.Response) -> etree._Element:
        kind = response.headers.get("content-type", "?").split(";")[0].strip()
        try:
            root = parse_xml(response.content)
        except XmlRefused:
            # Billion laughs and friends: refused unexpanded, like any unreadable answer.
            raise MalformedResponse(f"{where}: DTD/entity declarations refused") from None
        except etree.XMLSyntaxError:
            error = Transient if response.status_code >= 500 else MalformedResponse
            raise error(f"{where}: not XML ({kind})", status_code=response.status_code) from None
        if root.tag != f"{{{SOAP_ENV}}}Envelope":
            error = Transient if response.status_code >= 500 else MalformedResponse
            raise error(
                f"{where}: not a SOAP 1.1 envelope ({kind})", status_code=response.status_code
            )
        return root

    def _deserialize(
        self, description: zeep.Client, operation: str, envelope: etree._Element
    ) -> Any:
        called = self.bound(description).operation(operation)
        if called.reader is not None:
            try:
                return called.reader.read(envelope)
            except Fallback:
                pass  # zeep reads it, or says why it does not fit the WSDL
        try:
            result = called.binding.process_reply(envelope)
        # IndexError: an empty soap:Body (zeep reads its first child unchecked).
        except (zeep.exceptions.Error, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise MalformedResponse(
                f"{self.label} {operation}: answer does not fit the WSDL ({type(exc).__name__})"
            ) from None
        return serialize_object(result, target_cls=dict)

    def classify_fault(self, operation: str, fault: SoapFault) -> Exception:
        code = fault.detail_code
        reason = f"{self.label} {operation}: SOAP fault {fault.faultcode} {code or ''}".rstrip()
        if code in AUTH_CODES or fault.faultcode in WSSE_AUTH_FAULTS:
            return AuthFailed(reason, status_code=500)
        if code in PERMANENT_CODES or fault.retryable is False:
            return CaseRefused(reason, code=code)
        if code in TRANSIENT_CODES or fault.retryable is True:
            return Transient(reason, status_code=500)
        # Unknown code: SOAP says who is at fault (the sender's request, or the server).
        if fault.faultcode == "Client":
            return CaseRefused(reason, code=code)
        return Transient(reason, status_code=500)
