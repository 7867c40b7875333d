"""Cityworks Services API wire format: form-encoded calls, the envelope, token auth, and
the classification of every failure into the hub's error classes.

Each call is ``POST {base}/Services/{Area}/{Service}/{Method}`` with the form body
``data=<JSON>&token=<token>``; the answer is HTTP 200 with ``{Status, Message, Value,
ErrorMessages, ...}`` even for business errors (department-apis.md §2.1).

Messages of the errors raised here name the method, HTTP status and Cityworks error codes
only: never the password, the token, or anything from the payload (requester PII).
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
from pydantic import SecretStr

from hub.adapters import (
    AuthFailed,
    MalformedResponse,
    Permanent,
    Transient,
    parse_retry_after,
)
from hub.mapping.engine import local_to_utc
from hub.transports.http import make_async_client, send_classified

AUTHENTICATE = "General/Authentication/Authenticate"

# Envelope Status values.
OK, ERROR, UNAUTHORIZED, INVALID_CREDENTIALS = 0, 1, 2, 3
# ServiceRequestErrorCodes that retrying cannot fix: invalid request id, invalid field,
# status can't be closed/cancelled, required (custom) fields, item not found.
PERMANENT_CODES = frozenset({2, 30, 31, 32, 33, 34, 35})
# "Not authorized to view/update/create/cancel/delete": the account lacks a permission,
# which a human must grant, so the department is paused like for bad credentials.
NOT_AUTHORIZED_CODES = frozenset({3, 4, 5, 6, 7})


FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
# quote_plus of every ASCII character as one str.translate table: urlencode quotes byte by
# byte in Python, a sizeable share of a call for a kilobyte of JSON.
_FORM_SAFE = frozenset(string.ascii_letters + string.digits + "_.-~")
_FORM_QUOTE = {
    code: chr(code) if chr(code) in _FORM_SAFE else "+" if code == 32 else f"%{code:02X}"
    for code in range(128)
}


def form_encode(form: dict[str, str]) -> bytes:
    """``application/x-www-form-urlencoded`` exactly as urllib.parse.urlencode encodes it."""
    if all(key.isascii() and value.isascii() for key, value in form.items()):
        quote = _FORM_QUOTE
        pairs = (f"{key.translate(quote)}={value.translate(quote)}" for key, value in form.items())
        return "&".join(pairs).encode("ascii")
    return urlencode(form).encode("ascii")


class RequestRefused(Permanent):
    """Status 1 with a code retrying cannot fix. `codes` lets callers special-case one."""

    def __init__(self, message: str, *, codes: list[int]) -> None:
        super().__init__(message)
        self.codes = codes


def parse_local(value: Any, zone: ZoneInfo) -> datetime | None:
    """A Cityworks timestamp in UTC (None when absent or unreadable). Cityworks stamps are
    naive wall time of the install, read by the hub's one rule (decision 0011:
    :func:`hub.mapping.engine.local_to_utc`); a stamp with an offset is kept as given."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return local_to_utc(parsed, zone)


def utc_to_local(value: datetime, zone: ZoneInfo) -> str:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)  # hub convention: naive = UTC
    return aware.astimezone(zone).replace(tzinfo=None).isoformat(timespec="seconds")


class CityworksClient:
    """One per adapter instance: holds the HTTP client (created lazily inside the running
    loop) and the token, both reused across calls."""

    def __init__(
        self,
        *,
        base_url: str,
        login_name: str,
        password: SecretStr,
        timeout: float,
        zone: ZoneInfo,
        refresh_margin_seconds: float = 60.0,
        auth_path: str = "/Services/" + AUTHENTICATE,
        label: str = "publicworks",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._login_name = login_name
        self._password = password
        self._timeout = timeout
        self._zone = zone
        self._margin = refresh_margin_seconds
        self._auth_path = auth_path
        self.label = label
        self._http: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._token_expires: datetime | None = None
        self._auth_lock: asyncio.Lock | None = None

    # -- lifecycle ----------------------------------------------------------------

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = make_async_client(base_url=self.base_url, timeout=self._timeout)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- calls --------------------------------------------------------------------

    async def call(
        self,
        method: str,
        data: dict[str, Any],
        *,
        idempotent: bool,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> Any:
        """Run one Services method and return its `Value`, or raise a classified error.

        `idempotent` says whether a lost answer may be treated as "not applied" (reads):
        a non-idempotent call whose answer is lost raises UnknownOutcome instead.
        """
        body = json.dumps(data, separators=(",", ":"), default=str)
        token = await self._ensure_token()
        envelope = await self._post(method, body, token, files, idempotent=idempotent)
        if envelope.get("Status") == UNAUTHORIZED:
            # The token expired or was revoked server-side: log in again, retry once.
            token = await self._refresh(stale=token)
            envelope = await self._post(method, body, token, files, idempotent=idempotent)
            if envelope.get("Status") == UNAUTHORIZED:
                raise AuthFailed(f"{self.label} {method}: token refused right after login")
        return self._value(method, envelope)

    async def fetch(self, url: str) -> tuple[bytes, str | None]:
        """GET a file (evidence to upload); relative URLs resolve against the site."""
        response = await self._send(
            "evidence fetch", idempotent=True, request=lambda: self.http.get(url)
        )
        self._check_http("evidence fetch", response)
        return response.content, response.headers.get("content-type")

    async def _post(
        self,
        method: str,
        body: str,
        token: str | None,
        files: dict[str, tuple[str, bytes, str]] | None,
        *,
        idempotent: bool,
    ) -> dict:
        form = {"data": body} if token is None else {"data": body, "token": token}
        path = self._auth_path if method == AUTHENTICATE else "/Services/" + method
        # Without files, the form is encoded once here: the bytes httpx's `data=` would send.
        content = None if files else form_encode(form)

        def send() -> Awaitable[httpx.Response]:
            if content is None:  # multipart: httpx builds it
                return self.http.post(path, data=form, files=files)
            return self.http.post(path, content=content, headers=FORM_HEADERS)

        response = await self._send(method, idempotent=idempotent, request=send)
        return self._envelope(method, response)

    async def _send(self, method: str, *, idempotent: bool, request: Any) -> httpx.Response:
        return await send_classified(request, label=f"{self.label} {method}", idempotent=idempotent)

    # -- classification -----------------------------------------------------------

    def _check_http(self, method: str, response: httpx.Response) -> None:
        status = response.status_code
        where = f"{self.label} {method}: HTTP {status}"
        if status == 429 or status >= 500 or status == 408:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise Transient(where, retry_after=retry_after, status_code=status)
        if status in (401, 403):
            raise AuthFailed(where, status_code=status)
        if status >= 400:
            raise Permanent(where, status_code=status)

    def _envelope(self, method: str, response: httpx.Response) -> dict[str, Any]:
        self._check_http(method, response)
        try:
            envelope = response.json()
        except ValueError:
            kind = response.headers.get("content-type", "?").split(";")[0]
            raise MalformedResponse(
                f"{self.label} {method}: unreadable answer ({kind})",
                status_code=response.status_code,
            ) from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("Status"), int):
            raise MalformedResponse(f"{self.label} {method}: answer is not a Cityworks envelope")
        return envelope

    def _value(self, method: str, envelope: dict[str, Any]) -> Any:
        status = envelope["Status"]
        if status == OK:
            return envelope.get("Value")
        if status == INVALID_CREDENTIALS:
            raise AuthFailed(f"{self.label} {method}: invalid credentials")
        if status == UNAUTHORIZED:
            raise AuthFailed(f"{self.label} {method}: unauthorized")
        if status != ERROR:
            raise MalformedResponse(f"{self.label} {method}: unknown envelope Status {status}")
        items = [m for m in envelope.get("ErrorMessages") or [] if isinstance(m, dict)]
        codes = [m["Code"] for m in items if isinstance(m.get("Code"), int)]
        names = ", ".join(f"{m.get('Code')} {m.get('Name') or ''}".strip() for m in items)
        reason = f"{self.label} {method}: refused ({names or 'no error code'})"
        if PERMANENT_CODES.intersection(codes):
            raise RequestRefused(reason, codes=codes)
        if NOT_AUTHORIZED_CODES.intersection(codes):
            raise AuthFailed(reason)
        raise Transient(reason)

    # -- token --------------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        if self._auth_lock is None:
            self._auth_lock = asyncio.Lock()
        return self._auth_lock

    def _token_fresh(self) -> bool:
        if self._token is None:
            return False
        if self._token_expires is None:
            return True  # no expiry given: valid until the department refuses it
        return (self._token_expires - datetime.now(UTC)).total_seconds() > self._margin

    async def _ensure_token(self) -> str:
        if not self._token_fresh():
            async with self._lock():
                if not self._token_fresh():  # another task may have logged in meanwhile
                    await self._authenticate()
        assert self._token is not None
        return self._token

    async def _refresh(self, *, stale: str) -> str:
        async with self._lock():
            if self._token in (None, stale):
                await self._authenticate()
        assert self._token is not None
        return self._token

    async def _authenticate(self) -> None:
        self._token = None
        credentials = {"LoginName": self._login_name, "Password": self._password.get_secret_value()}
        envelope = await self._post(
            AUTHENTICATE, json.dumps(credentials), None, None, idempotent=True
        )
        value = self._value(AUTHENTICATE, envelope)
        token = value.get("Token") if isinstance(value, dict) else None
        if not isinstance(token, str) or not token:
            raise MalformedResponse(f"{self.label} {AUTHENTICATE}: no token in the answer")
        self._token = token
        self._token_expires = parse_local(value.get("Expires"), self._zone)
