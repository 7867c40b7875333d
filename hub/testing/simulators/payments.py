"""A Stripe-shaped payments service: PaymentIntents, refunds, signed webhooks.

Conventions follow department-apis.md §6.1: form-encoded bodies, ``Authorization: Bearer``
secret key, ``Idempotency-Key`` (same key + same parameters → the stored answer replayed;
different parameters → 400 ``idempotency_error``), errors as ``{"error": {type, code,
message}}``, intents ``requires_payment_method → (requires_action) → succeeded | canceled``.

Residents "pay" after ``pay_delay_seconds`` when ``auto_succeed`` is on (or through
``POST /pay/{id}`` / ``/__sim__/advance``). Payment faults, on top of the shared fault
profile: ``decline_rate`` (the payment fails: ``payment_intent.payment_failed``),
``action_rate`` (3-D-Secure style: ``requires_action`` for a while, then succeeded),
``duplicate_webhook_rate`` (the event is sent twice) and ``lost_webhook_rate`` (never
sent: the hub must poll). Webhooks are POSTed, signed ``Stripe-Signature: t=…,v1=…``, to
``webhook_url`` when one is set. Run standalone: ``hub simulate payments --port 8085``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import time
from collections import Counter
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters.payments.adapter import sign
from hub.testing.simulators.base import BaseSimulator, Fault, FaultProfile, serve_forever

DEFAULT_API_KEY = "sk_test_hub_simulator"
DEFAULT_WEBHOOK_SECRET = "whsec_hub_simulator"
Rate = Field(default=0.0, ge=0.0, le=1.0)


class PaymentBehaviour(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auto_succeed: bool = True
    pay_delay_seconds: float = Field(default=0.2, ge=0)
    decline_rate: float = Rate
    action_rate: float = Rate
    duplicate_webhook_rate: float = Rate
    lost_webhook_rate: float = Rate
    webhook_url: str | None = None
    seed: int | None = None


PAYMENT_KEYS = set(PaymentBehaviour.model_fields) - {"seed"}
PRESET_BEHAVIOUR = {  # the shared presets also bring payment trouble
    "flaky": {
        "decline_rate": 0.05,
        "action_rate": 0.1,
        "duplicate_webhook_rate": 0.1,
        "lost_webhook_rate": 0.1,
    },
}


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"flaky,decline_rate=0.2"`` → (fault spec without payment keys, payment keys)."""
    faults, payment = [], {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        key, _, value = part.partition("=")
        if key.strip() in PAYMENT_KEYS:
            payment[key.strip()] = value.strip()
        else:
            faults.append(part)
    preset = next((p for p in faults if "=" not in p), "none")
    return ",".join(faults), {**PRESET_BEHAVIOUR.get(preset, {}), **payment}


class PaymentsSimulator(BaseSimulator):
    name: ClassVar[str] = "payments"

    def __init__(
        self,
        faults: FaultProfile | str | dict[str, Any] | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        **behaviour: Any,
    ) -> None:
        super().__init__(faults)
        self.api_key, self.webhook_secret = api_key, webhook_secret
        self.behaviour = PaymentBehaviour.model_validate(behaviour)
        self.rng = random.Random(self.behaviour.seed)
        self.records: dict[str, dict[str, Any]] = {}  # intents by id
        self.refunds: dict[str, dict[str, Any]] = {}
        self.idempotency: dict[str, tuple[str, int, dict]] = {}
        self.create_calls: Counter[str] = Counter()
        self.webhooks: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task] = set()

    # -- BaseSimulator ------------------------------------------------------------------

    def configure(self, **behaviour: Any) -> PaymentBehaviour:
        self.behaviour = self.behaviour.model_copy(update=behaviour)
        PaymentBehaviour.model_validate(self.behaviour.model_dump())
        return self.behaviour

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            per_case = Counter(i["metadata"].get("hub_case_id") for i in self.records.values())
            return {
                "intents": list(self.records.values()),
                "refunds": list(self.refunds.values()),
                "create_calls": dict(self.create_calls),
                "duplicates": {c: n for c, n in per_case.items() if c and n > 1},
                "webhooks": [
                    {k: w[k] for k in ("id", "type", "sent", "status")} for w in self.webhooks
                ],
                "behaviour": self.behaviour.model_dump(),
            }

    def advance(self, count: int, *, close: bool = False, **options: Any) -> list[dict]:
        """Residents pay up to `count` unpaid intents."""
        unpaid = [i for i in self.records.values() if i["status"] in UNPAID]
        return [self._succeed(i["id"], notify=False) for i in unpaid[:count]]

    def clear(self) -> None:
        with self.lock:
            self.records.clear()
            self.refunds.clear()
            self.idempotency.clear()
            self.create_calls.clear()
            self.webhooks.clear()

    def error_envelope(self) -> Response:
        return JSONResponse(
            {"error": {"type": "api_error", "message": "An unknown error occurred"}}, 500
        )

    def admin_routes(self) -> list[BaseRoute]:
        return [
            *super().admin_routes(),
            Route("/__sim__/payments", self._configure_route, methods=["POST"]),
        ]

    async def _configure_route(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        try:
            return JSONResponse(self.configure(**body).model_dump())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)

    def api_routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/payment_intents", self._create, methods=["POST"]),
            Route("/v1/payment_intents/{id}", self._get, methods=["GET"]),
            Route("/v1/payment_intents/{id}/cancel", self._cancel, methods=["POST"]),
            Route("/v1/refunds", self._refund, methods=["POST"]),
            Route("/pay/{id}", self._pay_page, methods=["GET", "POST"]),
        ]

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status)

    async def _start(self, request: Request) -> tuple[Fault | None, Response | None, dict]:
        fault, early = await self.begin(frozenset(Fault) - {Fault.TOKEN_EXPIRY})
        if early is not None:
            return fault, early, {}
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return fault, self._error(401, "invalid_request_error", "Invalid API Key provided"), {}
        form = {k: str(v) for k, v in (await request.form()).items()}
        return fault, None, form

    def _replay(self, request: Request, form: dict) -> tuple[str | None, Response | None]:
        key = request.headers.get("idempotency-key")
        if not key:
            return None, None
        scope = f"{request.url.path}:{key}"
        digest = hashlib.sha256(json.dumps(form, sort_keys=True).encode()).hexdigest()
        with self.lock:
            stored = self.idempotency.get(scope)
        if stored is None:
            return scope, None
        if stored[0] != digest:
            return scope, self._error(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the"
                " same parameters they were first used with.",
            )
        return scope, JSONResponse(stored[2], stored[1], headers={"Idempotent-Replayed": "true"})

    def _remember(self, scope: str | None, form: dict, status: int, body: dict) -> None:
        if scope is not None:
            digest = hashlib.sha256(json.dumps(form, sort_keys=True).encode()).hexdigest()
            with self.lock:
                self.idempotency[scope] = (digest, status, body)

    # -- endpoints ----------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        fault, early, form = await self._start(request)
        if early is not None:
            return early
        scope, replay = self._replay(request, form)
        if replay is not None:
            return await self.finish(fault, replay)
        amount = form.get("amount", "")
        if not amount.isdigit() or int(amount) < 50:
            return self._error(
                400,
                "invalid_request_error",
                "Invalid integer: amount (minor units, at least 50)",
                param="amount",
            )
        intent = {
            "id": f"pi_{secrets.token_hex(12)}",
            "object": "payment_intent",
            "amount": int(amount),
            "amount_received": 0,
            "currency": form.get("currency", "usd").lower(),
            "status": "requires_payment_method",
            "client_secret": "",
            "description": form.get("description", ""),
            "metadata": {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")},
            "created": int(time.time()),
            "livemode": False,
        }
        intent["client_secret"] = f"{intent['id']}_secret_{secrets.token_hex(8)}"
        with self.lock:
            self.records[intent["id"]] = intent
            self.create_calls[intent["metadata"].get("hub_case_id", "")] += 1
        self._remember(scope, form, 200, dict(intent))
        self._plan(intent["id"])
        return await self.finish(fault, JSONResponse(intent))

    async def _get(self, request: Request) -> Response:
        fault, early, _ = await self._start(request)
        if early is not None:
            return early
        intent = self.records.get(request.path_params["id"])
        if intent is None:
            return self._error(404, "invalid_request_error", "No such payment_intent")
        return await self.finish(fault, JSONResponse(intent))

    async def _cancel(self, request: Request) -> Response:
        fault, early, _ = await self._start(request)
        if early is not None:
            return early
        intent = self.records.get(request.path_params["id"])
        if intent is None:
            return self._error(404, "invalid_request_error", "No such payment_intent")
        if intent["status"] in ("succeeded", "canceled"):
            if intent["status"] == "canceled":
                return await self.finish(fault, JSONResponse(intent))
            return self._error(
                400,
                "invalid_request_error",
                "You cannot cancel this PaymentIntent because it has a status of succeeded.",
            )
        intent["status"] = "canceled"
        self._notify("payment_intent.canceled", intent)
        return await self.finish(fault, JSONResponse(intent))

    async def _refund(self, request: Request) -> Response:
        fault, early, form = await self._start(request)
        if early is not None:
            return early
        scope, replay = self._replay(request, form)
        if replay is not None:
            return await self.finish(fault, replay)
        intent = self.records.get(form.get("payment_intent", ""))
        if intent is None or intent["status"] != "succeeded":
            return self._error(
                400,
                "invalid_request_error",
                "This PaymentIntent has no successful charge to refund",
            )
        refund = {
            "id": f"re_{secrets.token_hex(12)}",
            "object": "refund",
            "amount": intent["amount"],
            "payment_intent": intent["id"],
            "status": "succeeded",
            "metadata": intent["metadata"],
        }
        with self.lock:
            self.refunds[refund["id"]] = refund
            intent["amount_refunded"] = intent["amount"]
        self._remember(scope, form, 200, refund)
        self._notify("charge.refunded", {**refund, "currency": intent["currency"]})
        return await self.finish(fault, JSONResponse(refund))

    async def _pay_page(self, request: Request) -> Response:
        intent = self.records.get(request.path_params["id"])
        if intent is None:
            return Response("no such payment", 404)
        if request.method == "POST" and intent["status"] in UNPAID:
            self._succeed(intent["id"])
        return JSONResponse(
            {
                "id": intent["id"],
                "status": intent["status"],
                "amount": intent["amount"],
                "currency": intent["currency"],
            }
        )

    # -- the resident's side ------------------------------------------------------------

    def _plan(self, intent_id: str) -> None:
        b = self.behaviour
        if not b.auto_succeed:
            return
        roll = self.rng.random()
        if roll < b.decline_rate:
            self._later(b.pay_delay_seconds, self._decline, intent_id)
        elif roll < b.decline_rate + b.action_rate:
            self._later(b.pay_delay_seconds, self._require_action, intent_id)
        else:
            self._later(b.pay_delay_seconds, self._succeed, intent_id)

    def _later(self, delay: float, action, intent_id: str) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(delay, action, intent_id)

    def _decline(self, intent_id: str) -> None:
        intent = self.records.get(intent_id)
        if intent and intent["status"] in UNPAID:
            intent["last_payment_error"] = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
            }
            self._notify("payment_intent.payment_failed", intent)

    def _require_action(self, intent_id: str) -> None:
        intent = self.records.get(intent_id)
        if intent and intent["status"] in UNPAID:
            intent["status"] = "requires_action"
            self._notify("payment_intent.requires_action", intent)
            self._later(self.behaviour.pay_delay_seconds * 2, self._succeed, intent_id)

    def _succeed(self, intent_id: str, *, notify: bool = True) -> dict:
        intent = self.records[intent_id]
        if intent["status"] in UNPAID:
            intent.update(status="succeeded", amount_received=intent["amount"])
            intent["latest_charge"] = f"ch_{secrets.token_hex(12)}"
            if notify:
                self._notify("payment_intent.succeeded", intent)
        return intent

    def pay(self, intent_id: str) -> dict:
        """Test helper: the resident pays now."""
        return self._succeed(intent_id)

    # -- webhooks -----------------------------------------------------------------------

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        event = {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "type": kind,
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": dict(obj)},
        }
        b = self.behaviour
        record = {"id": event["id"], "type": kind, "sent": 0, "status": None, "event": event}
        self.webhooks.append(record)
        if not b.webhook_url or self.rng.random() < b.lost_webhook_rate:
            return
        times = 2 if self.rng.random() < b.duplicate_webhook_rate else 1
        try:
            task = asyncio.get_running_loop().create_task(self._send(record, times))
        except RuntimeError:  # called from a test thread: send synchronously
            self._send_sync(record, times)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _signed(self, event: dict) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(event).encode()
        return body, {
            "Content-Type": "application/json",
            "Stripe-Signature": sign(self.webhook_secret, body),
        }

    async def _send(self, record: dict, times: int) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(times):
                body, headers = self._signed(record["event"])
                try:
                    response = await client.post(
                        self.behaviour.webhook_url, content=body, headers=headers
                    )
                    record["status"] = response.status_code
                except httpx.HTTPError:
                    record["status"] = "unreachable"
                record["sent"] += 1

    def _send_sync(self, record: dict, times: int) -> None:
        for _ in range(times):
            body, headers = self._signed(record["event"])
            try:
                response = httpx.post(
                    self.behaviour.webhook_url or "", content=body, headers=headers, timeout=5
                )
                record["status"] = response.status_code
            except httpx.HTTPError:
                record["status"] = "unreachable"
            record["sent"] += 1

    def resend(self, event_id: str, *, timestamp: int | None = None) -> tuple[bytes, str]:
        """Test helper: the exact body of a sent event and a (re)signed header."""
        record = next(w for w in self.webhooks if w["id"] == event_id)
        body = json.dumps(record["event"]).encode()
        return body, sign(self.webhook_secret, body, timestamp)


UNPAID = {"requires_payment_method", "requires_confirmation", "requires_action", "processing"}


def main(port: int = 8085, host: str = "127.0.0.1", faults: str = "none") -> None:
    fault_spec, behaviour = split_spec(faults)
    serve_forever(PaymentsSimulator(faults=fault_spec, **behaviour), host=host, port=port)
