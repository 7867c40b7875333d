"""Structured logs: one JSON object per line, correlation ids from contextvars, redaction.

Every record that reaches the hub's handler goes through :class:`RedactionFilter` first:
requester PII (by field name, and anything shaped like an e-mail address or a phone
number) and secrets (by key name, URL passwords, bearer tokens) are replaced before the
record is formatted, whatever logger produced it (ours, httpx, zeep, uvicorn).

Correlation ids live in a contextvar, so they follow a delivery or a request through
every ``await`` and into the threads Starlette and ``asyncio.to_thread`` start:

* the dispatcher binds ``case_id``, ``delivery_id`` (the outbox id), ``department`` and
  ``operation`` for each attempt;
* the API binds ``request_id`` (the caller's ``X-Request-ID`` when it is sane).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any

FORMAT_ENV, LEVEL_ENV = "HUB_LOG_FORMAT", "HUB_LOG_LEVEL"
REDACTED = "[redacted]"

# ----------------------------------------------------------------------- correlation ids

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("hub_log_context", default=_EMPTY)


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add fields to every log record of this context (task, thread); None is ignored."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(MappingProxyType(merged))


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


# ----------------------------------------------------------------------- redaction

_SECRET_PARTS = (
    "password", "passwd", "secret", "token", "api_key", "apikey", "authorization",
    "cookie", "credential", "private_key", "signature",
)  # fmt: skip
_PII_PARTS = ("email", "phone", "mobile", "first_name", "last_name", "full_name", "surname")
_EXACT = frozenset(
    {"name", "address", "requester", "contact", "given_name", "family_name", "device_id",
     "account_id", "pwd", "auth"}
)  # fmt: skip


def _snake(key: str) -> str:
    """ContactFirstName / contact-first-name / CONTACT_FIRST_NAME → contact_first_name."""
    key = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
    return key.replace("-", "_").lower()


def is_sensitive_key(key: str) -> bool:
    """A field whose value is requester PII or a secret, judged by its name alone."""
    k = _snake(key)
    if k in _EXACT or k.endswith("_address"):
        return True
    return any(part in k for part in (*_SECRET_PARTS, *_PII_PARTS))


_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]+):[^@/\s]+@")
_BEARER = re.compile(r"(?i)\b(bearer|basic|digest)\s+[A-Za-z0-9._~+/=-]{6,}")
_XML_FIELD = re.compile(r"<((?:[\w-]+:)?([\w-]+))(\s[^<>]*)?>([^<]*)</\1\s*>")
_KEY_VALUE = re.compile(
    r"""(?P<q>["']?)(?P<key>[A-Za-z_][\w-]*)(?P=q)(?P<sep>\s*[:=]\s*)"""
    # An unquoted value stops where a dict, list or call opens (``Json({…``): the keys
    # inside decide for themselves, so a wrapper cannot carry a name past the redaction.
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;&}\]){\[(][^\s,;&}\]){\[(]*)"""
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"""(?<![\w.+-])(?:
        \+\d{1,3}[\s.-]?(?:\(\d{1,4}\)|\d{1,4})(?:[\s.-]?\d{2,4}){2,4}
      | (?:1[\s.-])?(?:\([2-9]\d{2}\)|[2-9]\d{2})[\s.-]?\d{3}[\s.-]?\d{4}
    )(?![\w-]|\.\d)""",
    re.VERBOSE,
)


def _xml_field(match: re.Match[str]) -> str:
    if not is_sensitive_key(match.group(2)):
        return match.group(0)
    return f"<{match.group(1)}{match.group(3) or ''}>{REDACTED}</{match.group(1)}>"


def _key_value(match: re.Match[str]) -> str:
    if not is_sensitive_key(match.group("key")):
        return match.group(0)
    value = match.group("value")
    quote = value[0] if value[:1] in "\"'" else ""
    return f"{match.group('q')}{match.group('key')}{match.group('q')}{match.group('sep')}" + (
        f"{quote}{REDACTED}{quote}"
    )


def redact_text(text: str) -> str:
    """Free text: URL passwords, auth headers, sensitive XML/JSON/k=v fields, e-mail
    addresses and phone numbers."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if "<" in text:
        text = _XML_FIELD.sub(_xml_field, text)
    if ":" in text or "=" in text:
        text = _KEY_VALUE.sub(_key_value, text)
    text = _EMAIL.sub("[email]", text)
    return _PHONE.sub("[phone]", text)


def redact_value(value: Any, key: str | None = None) -> Any:
    """Structured values: whole values under sensitive keys, text patterns elsewhere.
    Numbers and other scalars keep their type (so %d formatting still works)."""
    if key is not None and is_sensitive_key(key) and value is not None:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact_value(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


# Attributes every LogRecord has: anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "context", "_hub_redacted",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}  # fmt: skip


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _render(record: logging.LogRecord) -> str:
    args = record.args
    if not args:
        return str(record.msg)
    safe = redact_value(args)  # a dict stays a dict, a tuple a tuple: % still works
    try:
        return str(record.msg) % safe
    except (TypeError, ValueError, KeyError):  # a bad format string must not lose the line
        return f"{record.msg} {safe!r}"


class RedactionFilter(logging.Filter):
    """Rewrites a record in place (message, args, extras, traceback) before any
    formatter sees it; idempotent, so several handlers can carry it."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_hub_redacted", False):
            return True
        record.msg, record.args = redact_text(_render(record)), None
        for key, value in extra_fields(record).items():
            setattr(record, key, redact_value(value, key))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:  # tracebacks echo values (pydantic errors quote their input)
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        record.context = {k: redact_value(v, k) for k, v in current_context().items()}
        record._hub_redacted = True
        return True


# ----------------------------------------------------------------------- formatters


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, correlation ids, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = getattr(record, "context", None)
        entry.update(current_context() if context is None else context)
        entry.update(extra_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable, with the correlation ids appended as k=v."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = getattr(record, "context", None)
        fields = {**(current_context() if context is None else context), **extra_fields(record)}
        if not fields:
            return line
        head, _, tail = line.partition("\n")
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head} [{pairs}]" + (f"\n{tail}" if tail else "")


# ----------------------------------------------------------------------- setup

# Libraries that dump whole request bodies or headers at DEBUG: never below INFO,
# whatever HUB_LOG_LEVEL says ("never log payloads").
PAYLOAD_LOGGERS = ("zeep.transports", "zeep.wsdl.bindings.soap", "hpack", "asyncssh")


# Per-call chatter (httpx logs every request at INFO): shown only when asked for DEBUG.
CHATTY_LOGGERS = ("httpx", "apscheduler.executors.default")


class _HubHandler(logging.StreamHandler):
    """The handler configure_logging installs (a second call replaces it). Without an
    explicit stream it writes to whatever sys.stderr is at emit time, so a replaced
    stderr (test runners, daemonisers) never leaves it writing to a closed file."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self._fixed = stream

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value: IO[str] | None) -> None:
        self._fixed = value


def configure_logging(
    json: bool | None = None, level: str | int | None = None, stream: IO[str] | None = None
) -> logging.Handler:
    """Install one redacting handler on the root logger. Defaults: HUB_LOG_FORMAT
    (json|text, default json) and HUB_LOG_LEVEL (default INFO)."""
    if json is None:
        json = os.environ.get(FORMAT_ENV, "json").strip().lower() != "text"
    level = level or os.environ.get(LEVEL_ENV, "INFO")
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"{LEVEL_ENV}: unknown log level {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _HubHandler)]:
        root.removeHandler(old)
    handler = _HubHandler(stream or sys.stderr)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
        )
    logging.captureWarnings(True)
    return handler


__all__ = [
    "JsonFormatter",
    "RedactionFilter",
    "TextFormatter",
    "bind",
    "configure_logging",
    "current_context",
    "is_sensitive_key",
    "log_context",
    "redact_text",
    "redact_value",
    "unbind",
]
