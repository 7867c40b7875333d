"""Open311 XML: serialise responses (Spark convention) and parse untrusted XML safely.

GeoReport v2 XML is schemaless and namespace-free; a JSON list maps to a wrapper element
holding one singular child per item (``attributes`` → ``attribute``), which is the shape
real servers (open311-adapter, SF, Toronto) emit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lxml import etree

from hub.model import as_utc

# Plural wrapper → item element, as in the spec and open311-adapter's output.
ITEM_TAGS = {
    "service_requests": "request",
    "services": "service",
    "service_request_updates": "request_update",
    "errors": "error",
    "attributes": "attribute",
    "values": "value",
    "endpoints": "endpoint",
    "formats": "format",
    "groups": "group",
}


DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'


class UnsafeXML(ValueError):
    """The document declares entities or a DTD: refused rather than expanded."""


def w3c(value: datetime) -> str:
    """W3C datetime with an explicit offset, as GeoReport v2 requires."""
    return as_utc(value).isoformat(timespec="seconds").replace("+00:00", "Z")


def text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return w3c(value)
    return str(value)


def _fill(element: etree._Element, value: Any) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _fill(etree.SubElement(element, key), child)
    elif isinstance(value, list | tuple):
        item_tag = ITEM_TAGS.get(element.tag, "item")
        for child in value:
            _fill(etree.SubElement(element, item_tag), child)
    else:
        element.text = text_of(value)


def render(root: str, data: Any) -> bytes:
    """`data` (a list for list documents, a dict otherwise) as an XML document."""
    element = etree.Element(root)
    _fill(element, data)
    return DECLARATION + etree.tostring(element, encoding="utf-8", pretty_print=True)


def _parser() -> etree.XMLParser:
    # No entity expansion, no DTD loading, no network: billion laughs and XXE both fail.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def parse(data: bytes) -> etree._Element:
    """Parse untrusted XML; raise UnsafeXML for any DTD, ValueError when malformed."""
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"malformed XML: {exc}") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        raise UnsafeXML("XML with a DOCTYPE is refused (entity expansion)")
    return root


def to_data(element: etree._Element) -> Any:
    """The inverse of `render` for simple documents (used by tests and importers)."""
    children = list(element)
    if not children:
        return element.text or ""
    if element.tag in ITEM_TAGS:
        return [to_data(child) for child in children]
    return {child.tag: to_data(child) for child in children}
