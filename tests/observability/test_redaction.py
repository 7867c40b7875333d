"""The redaction filter: requester PII and secrets never survive into a log line."""

from __future__ import annotations

import json
import logging

import pytest

from hub.model import Requester
from hub.observability.logging import (
    JsonFormatter,
    RedactionFilter,
    TextFormatter,
    is_sensitive_key,
    log_context,
    redact_text,
    redact_value,
)


@pytest.mark.parametrize(
    "text",
    [
        "mail maria.garcia42@example.com now",
        "MARIA.O'CONNOR+311@Sub.Example.ORG",
        "call (617) 555-0134",
        "call 617.555.0199 or 617 555 0100",
        "call 6175550123",
        "call 1-617-555-0134",
        "call +1 617 555 0134",
        "call +44 20 7946 0958",
    ],
)
def test_emails_and_phone_numbers_are_removed_from_text(text: str) -> None:
    out = redact_text(text)
    assert "@" not in out and "555" not in out and "7946" not in out, out


@pytest.mark.parametrize(
    "text",
    [
        "uuid 550e8400-e29b-41d4-a716-446655440000",
        "at 2026-11-22T10:15:30.123456+00:00",
        "epoch 1732272000, took 1234.5678 ms, 500 errors in 3 attempts",
        "lat 42.360081 long -71.058884",
        "connect 127.0.0.1:8080 failed",
        "case DEMO-7-0000123 outbox id 123456",
        "service_code=PTHOLE department=publicworks",
    ],
)
def test_ordinary_numbers_ids_and_times_are_kept(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql+psycopg://hub:s3cr3t-pw@db.example.com:5432/hub", "s3cr3t-pw"),
        ("Authorization: Bearer eyJhbGciOi.JIUzI1NiJ9.abc", "eyJhbGciOi"),
        ("headers={'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ("login password=hunter2&user=ops", "hunter2"),
        ('{"api_key": "sk_live_123456", "n": 1}', "sk_live_123456"),
        ("X-Api-Key: k-abcdef", "k-abcdef"),
        ("client_secret='gis-very-secret'", "gis-very-secret"),
        ("<ns0:Password>hunter2</ns0:Password>", "hunter2"),
        ("<wsse:UsernameToken><wsse:Password Type='x'>pw-9</wsse:Password>", "pw-9"),
    ],
)
def test_secrets_are_removed_from_text(text: str, secret: str) -> None:
    assert secret not in redact_text(text)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("<ContactFirstName>Maria</ContactFirstName>", "Maria"),
        ("<ns1:callerLastName>Fitzgerald</ns1:callerLastName>", "Fitzgerald"),
        ('{"first_name": "Maria", "last_name": "O\'Connor"}', "O\\'Connor"),
        ("requester={'first_name': 'Maria', 'last_name': 'Nguyen'}", "Nguyen"),
        ('"name": "Maria Garcia"', "Garcia"),
        ("full_name='Maria Garcia'", "Garcia"),
        # A SQL error's parameters: the sensitive key opens a wrapper call, not a dict.
        ("{'requester': Json({'first_name': 'Dmitri', 'phone': None}), 'id': 3}", "Dmitri"),
        ("requester=Requester(first_name='Dmitri', last_name='Ivanov')", "Dmitri"),
        ("'requester': [{'first_name': 'Dmitri'}]", "Dmitri"),
    ],
)
def test_names_under_pii_fields_are_removed(text: str, name: str) -> None:
    assert name not in redact_text(text).replace("[redacted]", "")


def test_structured_values_are_redacted_by_key_and_keep_their_types() -> None:
    data = {
        "email": "x@example.com",
        "Phone": "617-555-0100",
        "requester": {"first_name": "Maria"},
        "nested": [{"password": "p"}, "call 617-555-0101", 3],
        "count": 3,
        "service_name": "Pothole",
        "department": "publicworks",
    }
    out = redact_value(data)
    assert out["email"] == out["Phone"] == out["requester"] == "[redacted]"
    assert out["nested"] == [{"password": "[redacted]"}, "call [phone]", 3]
    assert out["count"] == 3 and out["service_name"] == "Pothole"
    assert out["department"] == "publicworks"


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("email", True), ("ContactEmail", True), ("phone_number", True), ("first_name", True),
        ("LastName", True), ("name", True), ("address", True), ("requester", True),
        ("password", True), ("X-Api-Key", True), ("client_secret", True),
        ("Authorization", True), ("access_token", True),
        ("service_name", False), ("address_string", False), ("department", False),
        ("case_id", False), ("delivery_id", False), ("duration_ms", False),
    ],
)  # fmt: skip
def test_sensitive_key_names(key: str, sensitive: bool) -> None:
    assert is_sensitive_key(key) is sensitive


def make_record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad input maria@example.com")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    record = logging.LogRecord("hub.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_the_filter_redacts_args_extras_and_tracebacks() -> None:
    person = Requester(first_name="Maria", last_name="Nguyen", email="m.n@example.com")
    record = make_record(
        "sent %s to %s for %d cases (%r)",
        "m.n@example.com",
        "617-555-0142",
        3,
        person,
        exc=True,
        email="m.n@example.com",
        token="tok-123",
        outcome="retry",
    )
    RedactionFilter().filter(record)
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["message"] == "sent [email] to [phone] for 3 cases (Requester(<redacted>))"
    assert entry["email"] == "[redacted]" and entry["token"] == "[redacted]"
    assert entry["outcome"] == "retry"
    assert "ValueError: bad input [email]" in entry["exc"]
    for leaked in ("m.n@example.com", "617-555-0142", "Nguyen", "tok-123"):
        assert leaked not in line


def test_dict_args_and_broken_format_strings_are_still_redacted() -> None:
    record = make_record("%(who)s wrote", {"who": "a@b.example.com"})
    RedactionFilter().filter(record)
    assert record.getMessage() == "[email] wrote"
    broken = make_record("no placeholders", "x@example.com")
    RedactionFilter().filter(broken)
    assert "x@example.com" not in broken.getMessage()


def test_json_lines_carry_the_context_and_text_lines_too() -> None:
    with log_context(case_id="c-1", delivery_id=7, department="publicworks"):
        record = make_record("multi\nline %s", "message")
        RedactionFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert {"ts", "level", "logger", "message"} <= entry.keys()
    assert entry["level"] == "warning" and entry["logger"] == "hub.test"
    assert entry["case_id"] == "c-1" and entry["delivery_id"] == 7
    assert "\n" not in JsonFormatter().format(record)
    text = TextFormatter().format(record)
    assert "case_id=c-1" in text and "delivery_id=7" in text


def test_the_filter_is_idempotent() -> None:
    record = make_record("to %s", "x@example.com")
    f = RedactionFilter()
    f.filter(record)
    f.filter(record)
    assert record.getMessage() == "to [email]"
