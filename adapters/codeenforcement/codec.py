"""Compiled envelopes for the case service: zeep's own reading of the WSDL, walked once per
operation into a plan that builds requests and reads answers without zeep's per-call
object machinery.

Why: zeep reads a document by building a CompoundValue per complex element (defaults,
signature processing, ``OrderedDict`` updates) and the adapter then converts those to dicts
(``serialize_object``). A 200-case status page cost ~110 ms of CPU that way, most of it
zeep's generic walk. The plan does the same walk directly, with the same zeep type objects
converting every value (``pythonvalue`` / ``xmlvalue``), so dates, numbers and booleans
come out exactly as zeep makes them.

What stays zeep's: the WSDL and XSD (parsed by zeep, strictly), every value conversion,
and every document or value outside the plain shape a plan reproduces exactly. Anything
else raises ``Fallback`` and the caller lets zeep handle the whole call, so unusual input
(``xsi:type``, unqualified or misplaced elements, a SOAP header, a value zeep would refuse
or log, a field the WSDL lacks) gets exactly zeep's answer or error. Tests compare the two
paths on every operation and on broken documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from lxml import etree
from lxml.builder import ElementMaker
from zeep.wsdl.bindings.soap import SoapOperation
from zeep.wsdl.messages.soap import DocumentMessage
from zeep.xsd import ComplexType, Element, Sequence
from zeep.xsd.types.builtins import Date, DateTime, String
from zeep.xsd.types.simple import AnySimpleType

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
# Python values a plan writes with the zeep type's xmlvalue; anything else is zeep's.
SCALARS = frozenset({str, bool, int, float, Decimal, datetime, date, time, bytes})
_PLACEHOLDER = "hub-codec-body-placeholder"
# Naive local timestamps as case systems send them (up to microseconds), and plain dates.
NAIVE_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class Fallback(Exception):
    """Outside what a plan reproduces exactly: let zeep handle this call."""


@dataclass(frozen=True)
class Leaf:
    """An element of a simple type. `parse` is None where zeep keeps the text as it is."""

    name: str
    tag: str
    optional: bool
    max_occurs: int | None  # None: unbounded
    default: Any
    parse: Callable[[str], Any] | None
    render: Callable[[Any], str]
    multiple: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "multiple", self.max_occurs != 1)


@dataclass(frozen=True)
class Node:
    """An element of a complex type: a plain sequence of elements, no attributes.

    Derived once for the reading loop: `positions` (child tag → place in the sequence),
    `required_before` (per place, the last required place before it, or -1) and
    `template` (what zeep's CompoundValue holds before parsing; lists are made fresh)."""

    name: str
    tag: str
    optional: bool
    max_occurs: int | None
    default: Any
    children: tuple[Leaf | Node, ...]
    multiple: bool = field(init=False)
    positions: dict[str, int] = field(init=False, repr=False)
    required_before: tuple[int, ...] = field(init=False, repr=False)
    template: dict[str, Any] = field(init=False, repr=False)
    lists: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        children = self.children
        last, required_before = -1, []
        for place, child in enumerate(children):
            required_before.append(last)
            last = last if child.optional else place
        derived = {
            "multiple": self.max_occurs != 1,
            "positions": {child.tag: place for place, child in enumerate(children)},
            "required_before": tuple(required_before),
            "template": {c.name: None if c.multiple else c.default for c in children},
            "lists": tuple(c.name for c in children if c.multiple),
        }
        for key, value in derived.items():
            object.__setattr__(self, key, value)

    def defaults(self) -> dict[str, Any]:
        values = self.template.copy()
        for name in self.lists:
            values[name] = []
        return values


# --------------------------------------------------------------------------- compiling


def compile_element(element: Any, name: str | None = None) -> Leaf | Node | None:
    """The plan for one zeep element, or None if it uses anything a plan does not
    reproduce (subclassed or overridden zeep behaviour, attributes, choices, any...)."""
    if type(element) is not Element:
        return None
    max_occurs = None if element.max_occurs == "unbounded" else element.max_occurs
    if not isinstance(max_occurs, int | None) or max_occurs == 0:
        return None
    common = {
        "name": name or element.attr_name,
        "tag": element.qname.text,
        "optional": element.is_optional,
        "max_occurs": max_occurs,
        "default": None if element.is_optional else element.default,
    }
    kind = element.type
    if isinstance(kind, AnySimpleType):
        if not _inherits(kind, AnySimpleType, SIMPLE_METHODS):
            return None
        return Leaf(parse=_reader(kind), render=kind.xmlvalue, **common)
    children = _sequence_children(kind)
    return None if children is None else Node(children=children, **common)


def _reader(kind: Any) -> Callable[[str], Any] | None:
    """The zeep type's pythonvalue; None for zeep's strings (the text itself), and for
    zeep's dateTime and date a shortcut on the plain forms (the standard library's
    fromisoformat gives the very values isodate does there; tests compare them)."""
    method = type(kind).pythonvalue
    if method is String.pythonvalue:
        return None
    if method is DateTime.pythonvalue:
        return _shortcut(NAIVE_DATETIME, datetime.fromisoformat, kind.pythonvalue)
    if method is Date.pythonvalue:
        return _shortcut(DATE, date.fromisoformat, kind.pythonvalue)
    return kind.pythonvalue


def _shortcut(
    plain: re.Pattern[str], fast: Callable[[str], Any], zeep: Callable[[str], Any]
) -> Callable[[str], Any]:
    match = plain.fullmatch

    def parse(text: str) -> Any:
        if match(text):
            try:
                return fast(text)
            except ValueError:
                pass  # e.g. year 0 or February 30th: zeep says what it says
        return zeep(text)

    return parse


# What zeep runs per value; a type class that overrides any of them is zeep's alone.
# (zeep gives every named or anonymous XSD type a class of its own, inheriting these.)
SIMPLE_METHODS = ("parse_xmlelement", "render", "validate", "parse_kwargs")
COMPLEX_METHODS = (
    "parse_xmlelement",
    "render",
    "validate",
    "parse_kwargs",
    "_create_object",
    "__call__",
)


def _inherits(kind: Any, base: type, methods: tuple[str, ...]) -> bool:
    return isinstance(kind, base) and all(
        getattr(type(kind), name) is getattr(base, name) for name in methods
    )


def _sequence_children(kind: Any) -> tuple[Leaf | Node, ...] | None:
    if not _inherits(kind, ComplexType, COMPLEX_METHODS):
        return None
    if kind.attributes or len(kind.elements_nested) != 1:
        return None
    _, indicator = kind.elements_nested[0]
    if type(indicator) is not Sequence or (indicator.min_occurs, indicator.max_occurs) != (1, 1):
        return None
    if not all(type(member) is Element for member in indicator):
        return None
    children = tuple(compile_element(e, name) for name, e in indicator.elements)
    if not children or any(c is None for c in children):
        return None
    return children  # type: ignore[return-value]


def _plain_message(message: Any) -> bool:
    """A document/literal message with one body part and no SOAP header parts."""
    return (
        type(message) is DocumentMessage
        and not message._is_body_wrapped
        and message.body is not None
        and message.header is not None
        and not message.header.type._element
    )


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReplyReader:
    """Reads an operation's answer into what ``serialize_object(process_reply(...))``
    returns, unwrapping the body the way zeep's DocumentMessage.deserialize does."""

    body: Node
    soap_env: str

    @classmethod
    def compile(cls, binding_operation: Any, settings: Any) -> ReplyReader | None:
        output = binding_operation.output
        if not (settings.strict and not settings.xsd_ignore_sequence_order):
            return None
        if output is None or not _plain_message(output):
            return None
        if type(binding_operation).process_reply is not SoapOperation.process_reply:
            return None
        body = compile_element(output.body)
        if not isinstance(body, Node):
            return None
        return cls(body=body, soap_env=binding_operation.nsmap["soap-env"])

    def read(self, envelope: etree._Element) -> Any:
        if envelope.tag != f"{{{self.soap_env}}}Envelope":
            raise Fallback
        if envelope.find(f"{{{self.soap_env}}}Header") is not None:
            raise Fallback
        body = envelope.find(f"{{{self.soap_env}}}Body")
        if body is None or not len(body):
            raise Fallback
        first = body[0]
        if first.tag != self.body.tag or first.get(XSI_TYPE) is not None:
            raise Fallback
        values = _read_node(self.body, first, allow_none=False)
        return self._unwrap(values)

    def _unwrap(self, values: dict[str, Any]) -> Any:
        # DocumentMessage.deserialize: one child is returned bare, and a bare complex
        # value with one element of its own is unwrapped once more.
        if len(values) != 1:
            return values or None
        (only,) = self.body.children
        value = values[only.name]
        if isinstance(only, Node) and not only.multiple and len(only.children) == 1:
            return None if value is None else value[only.children[0].name]
        return value


def _read_node(node: Node, element: etree._Element, *, allow_none: bool) -> dict[str, Any] | None:
    """zeep's strict sequence walk for documents it reads without complaint: each child is
    the next element of the sequence (or another of a repeated one), no required element
    skipped, nothing left over. Anything else is Fallback: zeep then raises, or matches
    leniently (an unqualified element with the right local name)."""
    values = node.defaults()
    specs, positions, required_before = node.children, node.positions, node.required_before
    current, taken, empty = -1, 0, True
    for child in element:
        empty = False
        place = positions.get(child.tag)  # comments, PIs and unknown tags: None
        if place is None:
            raise Fallback
        spec = specs[place]
        if place == current:
            if not spec.multiple or (spec.max_occurs is not None and taken >= spec.max_occurs):
                raise Fallback
            taken += 1
        elif place > current and required_before[place] <= current:
            current, taken = place, 1
        else:
            raise Fallback
        if child.get(XSI_TYPE) is not None:
            raise Fallback  # zeep would read it as the type it names
        if spec.multiple:
            values[spec.name].append(_read(spec, child))
        else:
            values[spec.name] = _read(spec, child)
    if empty:
        if len(element.attrib):
            raise Fallback  # zeep builds an object from the attributes alone
        if allow_none:
            return None
    return values


def _read(spec: Leaf | Node, element: etree._Element) -> Any:
    if type(spec) is Node:
        return _read_node(spec, element, allow_none=True)
    text = element.text
    if text is None or spec.parse is None:  # type: ignore[union-attr]
        return text
    try:
        return spec.parse(text)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise Fallback from None  # zeep logs it and reads None: its behaviour, its call


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class RequestWriter:
    """Writes an operation's body element from keyword values, as zeep renders it; the
    envelope around it (`envelope_frame`) is in the binding's SOAP namespace."""

    body: Node
    soap_env: str

    @classmethod
    def compile(cls, binding_operation: Any, description: Any) -> RequestWriter | None:
        message = binding_operation.input
        if message is None or not _plain_message(message):
            return None
        if binding_operation.abstract.wsa_action or description.plugins or description.wsse:
            return None  # zeep would add WS-Addressing, plugins' or its own WS-Security
        if description.wsdl.types._prefix_map_custom:
            return None  # custom prefixes are declared on the envelope, not the body
        body = compile_element(message.body)
        if not isinstance(body, Node) or body.multiple:
            return None
        return cls(body=body, soap_env=binding_operation.nsmap["soap-env"])

    def write(self, params: dict[str, Any]) -> bytes:
        """The serialized body element (UTF-8, no declaration), or Fallback."""
        element = etree.Element(self.body.tag)
        _write_children(self.body, element, params)
        return etree.tostring(element, encoding="utf-8", xml_declaration=False)


def _write_children(node: Node, element: etree._Element, values: dict[str, Any]) -> None:
    names = {c.name for c in node.children}
    if not names.issuperset(values):
        raise Fallback  # zeep names the unknown field in its TypeError
    for spec in node.children:
        value = values.get(spec.name)
        if value is None:
            if not spec.optional:
                raise Fallback  # zeep: "Missing element"
            continue
        if spec.multiple:
            raise Fallback
        child = etree.SubElement(element, spec.tag)
        if isinstance(spec, Node):
            if type(value) is not dict:
                raise Fallback
            _write_children(spec, child, value)
        elif type(value) in SCALARS:
            try:
                child.text = spec.render(value)
            except (TypeError, ValueError):
                raise Fallback from None
        else:
            raise Fallback


def envelope_frame(soap_env: str, security: Callable[[etree._Element], Any]) -> tuple[bytes, bytes]:
    """The bytes around the body element of every request: the envelope zeep's
    SoapMessage.serialize builds, with the WS-Security header `security` applies.
    Computed once per client; it holds the client's credentials."""
    soap = ElementMaker(namespace=soap_env, nsmap={"soap-env": soap_env})
    envelope = soap.Envelope()
    body = soap.Body()
    envelope.append(body)
    etree.SubElement(body, _PLACEHOLDER)
    security(envelope)
    text = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
    before, marker, after = text.partition(f"<{_PLACEHOLDER}/>".encode())
    if not marker or _PLACEHOLDER.encode() in after:
        raise ValueError("envelope frame: placeholder not found once")
    return before, after
