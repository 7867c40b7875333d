"""Payments adapter: a Stripe-shaped PaymentIntents API (department-apis.md §6.1).

Declares ``payment`` only. Calls:

- ``create_intent(case_id, amount_cents, currency)`` → ``POST /v1/payment_intents`` with an
  ``Idempotency-Key`` derived from the case, so a retry after a timeout never charges twice;
- ``get_intent(id)``, ``cancel_intent(id)``, ``refund(intent_id)`` (``POST /v1/refunds``,
  idempotent too);
- ``verify_webhook(body, header)``: ``Stripe-Signature: t=…,v1=…`` is HMAC-SHA256 of
  ``"{t}.{raw body}"`` with the endpoint secret; any ``v1`` may match (secret rotation);
  a ``t`` more than ``webhook_tolerance_seconds`` (300) away is refused.

Amounts are integers in minor units with a currency, never floats: a float is refused
before anything is sent. Errors: 401/403 → AuthFailed; 409 and 429 and 5xx → Transient;
other 4xx (``invalid_request_error``, ``idempotency_error``) → Permanent; a POST that timed
out → UnknownOutcome (safe to repeat: same Idempotency-Key).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
from pydantic import BaseModel, Field, SecretStr

from hub.adapters import (
    Adapter,
    AdapterConfig,
    AuthFailed,
    Capability,
    MalformedResponse,
    Permanent,
    Transient,
    UnknownOutcome,
    parse_retry_after,
)
from hub.transports.http import NOT_SENT, make_async_client

SIGNATURE_HEADER = "Stripe-Signature"
PAID = "succeeded"
TERMINAL = frozenset({"succeeded", "canceled"})


class PaymentsConfig(AdapterConfig):
    base_url: str = Field(description="API root, e.g. https://api.stripe.com")
    api_key: SecretStr = Field(description="secret key, from {env: VAR} or {file: /path} only")
    webhook_secret: SecretStr | None = Field(
        default=None, description="endpoint secret (whsec_…) of POST /webhooks/payments"
    )
    webhook_tolerance_seconds: int = Field(default=300, ge=1)
    checkout_url: str = Field(
        default="{base_url}/pay/{id}", description="where the resident pays ({id}: intent id)"
    )
    api_version: str | None = Field(default=None, description="Stripe-Version header")
    poll_delay_seconds: float = Field(default=60.0, gt=0, description="first status poll")
    max_polls: int = Field(default=6, ge=0, description="polls per intent (delay doubles)")


class PaymentIntent(BaseModel):
    id: str
    status: str
    amount: int
    currency: str
    amount_received: int = 0
    url: str | None = None
    case_id: str | None = None


class Refund(BaseModel):
    id: str
    status: str
    amount: int


class WebhookInvalid(Exception):
    """A payment notification that is forged, stale or unreadable: nothing was applied."""


def minor_units(amount: Any) -> int:
    """Money is an int of minor units; floats (and bools) are refused, not rounded."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise Permanent(f"amount must be an integer of minor units, got {type(amount).__name__}")
    if amount <= 0:
        raise Permanent("amount must be positive")
    return amount


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header value for `body` (the simulator and tests use it)."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(
    secret: str, header: str | None, body: bytes, *, tolerance: int = 300, now: float | None = None
) -> None:
    if not header:
        raise WebhookInvalid(f"missing {SIGNATURE_HEADER} header")
    pairs = [part.strip().partition("=") for part in header.split(",")]
    stamps = [v for k, _, v in pairs if k == "t"]
    macs = [v for k, _, v in pairs if k == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        raise WebhookInvalid("Unable to extract timestamp and signatures from header")
    if not macs:
        raise WebhookInvalid("No signatures found with expected scheme v1")
    t = int(stamps[0])
    expected = sign(secret, body, t).split("v1=", 1)[1]
    if not any([hmac.compare_digest(expected, mac) for mac in macs]):
        raise WebhookInvalid("No signatures found matching the expected signature for payload")
    if abs((time.time() if now is None else now) - t) > tolerance:
        raise WebhookInvalid("Timestamp outside the tolerance zone")


class PaymentsAdapter(Adapter):
    name = "payments"
    transport = "http"
    config_model = PaymentsConfig
    capabilities = frozenset({Capability.PAYMENT})
    description = "Stripe-shaped PaymentIntents (fee gate before dispatch), not work orders"

    config: PaymentsConfig

    def __init__(self, config: PaymentsConfig, *, department: str | None = None) -> None:
        super().__init__(config, department=department)
        self._client: httpx.AsyncClient | None = None

    async def create_intent(
        self, case_id: str, amount_cents: int, currency: str, *, description: str = ""
    ) -> PaymentIntent:
        form = {
            "amount": str(minor_units(amount_cents)),
            "currency": currency.lower(),
            "automatic_payment_methods[enabled]": "true",
            "description": description[:200],
            "metadata[hub_case_id]": case_id,
        }
        body = await self._call("POST", "/v1/payment_intents", form, key=f"{case_id}:intent")
        return self._intent(body)

    async def get_intent(self, intent_id: str) -> PaymentIntent:
        return self._intent(await self._call("GET", f"/v1/payment_intents/{intent_id}"))

    async def cancel_intent(self, intent_id: str) -> PaymentIntent:
        path = f"/v1/payment_intents/{intent_id}/cancel"
        return self._intent(await self._call("POST", path, {}, key=f"{intent_id}:cancel"))

    async def refund(self, intent_id: str) -> Refund:
        form = {"payment_intent": intent_id}
        body = await self._call("POST", "/v1/refunds", form, key=f"{intent_id}:refund")
        return Refund(id=str(body["id"]), status=str(body["status"]), amount=int(body["amount"]))

    def verify_webhook(self, body: bytes, header: str | None, *, now: float | None = None) -> None:
        secret = self.config.webhook_secret
        if secret is None:
            raise WebhookInvalid("no webhook_secret configured: refusing unsigned notifications")
        verify_signature(
            secret.get_secret_value(),
            header,
            body,
            tolerance=self.config.webhook_tolerance_seconds,
            now=now,
        )

    # ----------------------------------------------------------------------- transport

    def _intent(self, body: dict[str, Any]) -> PaymentIntent:
        try:
            intent_id = str(body["id"])
            url = self.config.checkout_url.format(
                base_url=self.config.base_url.rstrip("/"), id=intent_id
            )
            return PaymentIntent(
                id=intent_id,
                status=str(body["status"]),
                amount=int(body["amount"]),
                currency=str(body["currency"]).upper(),
                amount_received=int(body.get("amount_received") or 0),
                url=url,
                case_id=(body.get("metadata") or {}).get("hub_case_id"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(f"payment intent without {exc}") from None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"}
            if self.config.api_version:
                headers["Stripe-Version"] = self.config.api_version
            self._client = make_async_client(
                base_url=self.config.base_url.rstrip("/"),
                timeout=self.config.timeout_seconds,
                headers=headers,
            )
        return self._client

    async def _call(
        self, method: str, path: str, form: dict[str, str] | None = None, *, key: str = ""
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": key} if key else {}
        try:
            response = await self.client().request(method, path, data=form, headers=headers)
        except NOT_SENT as exc:
            raise Transient(f"payments unreachable ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            if method == "POST":  # may have been applied: the same key makes a retry safe
                raise UnknownOutcome(f"payments call unanswered ({type(exc).__name__})") from None
            raise Transient(f"payments unreachable ({type(exc).__name__})") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 300 or not isinstance(body, dict) or "error" in body:
            raise _classified(response, body)
        return body

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _classified(response: httpx.Response, body: Any) -> Exception:
    code = response.status_code
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        if code < 300 or code >= 500:
            return MalformedResponse(f"payments answered HTTP {code} without a readable body")
        error = {}
    message = f"payments HTTP {code} {error.get('type', '')}: {error.get('message', '')}".strip()
    if code in (401, 403):
        return AuthFailed(f"payments refused the API key (HTTP {code})", status_code=code)
    if code in (409, 429) or code >= 500 or (code < 300 and error):
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return Transient(message, retry_after=retry_after, status_code=code)
    return Permanent(message, status_code=code)
