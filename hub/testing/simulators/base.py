"""Reusable machinery for department simulators: fault injection, admin routes, a server.

A simulator is a real server on loopback (Starlette + uvicorn) that behaves like a
department system, including its failures. Every simulator shares:

- a :class:`FaultProfile` (what goes wrong, how often) drawn per request by a
  :class:`FaultInjector` that is deterministic for a seed and safe across threads;
- admin routes under ``/__sim__/`` (state, faults, advance, reset) built by
  :class:`BaseSimulator`;
- :class:`SimulatorServer` to run it in a background thread for tests and the demo, and
  :func:`serve_forever` for the standalone CLI.

Protocol-specific simulators (REST, SOAP, file drop) subclass :class:`BaseSimulator` and
bracket each department call with :meth:`BaseSimulator.begin` / :meth:`BaseSimulator.finish`.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from enum import StrEnum
from typing import Any, ClassVar

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

# --------------------------------------------------------------------------- indexes


class ChangeIndex:
    """What a real department system indexes so its change feeds and work queues cost
    O(changes), not O(records): every change as (stamp, key) in stamp order, and the keys
    of open records in the order they opened. Callers hold the simulator's lock; a key's
    earlier entries stay in the log, so readers check a hit against the record now."""

    def __init__(self) -> None:
        self.log: list[tuple[datetime, Hashable]] = []
        self.open: dict[Hashable, None] = {}

    def note(self, key: Hashable, stamp: datetime, *, is_open: bool) -> None:
        bisect.insort(self.log, (stamp, key), key=lambda entry: entry[0])  # stamps grow
        if is_open:
            self.open.setdefault(key, None)
        else:
            self.open.pop(key, None)

    def changed(self, begin: datetime, end: datetime | None = None) -> list[tuple]:
        """(stamp, key) of the changes stamped in [begin, end], in stamp order."""
        start = bisect.bisect_left(self.log, begin, key=lambda entry: entry[0])
        stop = (
            len(self.log)
            if end is None
            else bisect.bisect_right(self.log, end, key=lambda entry: entry[0])
        )
        return self.log[start:stop]


# --------------------------------------------------------------------------- faults


class Fault(StrEnum):
    ERROR_5XX = "error_5xx"
    RATE_LIMIT = "rate_limit_429"
    TIMEOUT_AFTER_COMMIT = "timeout_after_commit"
    MALFORMED = "malformed"
    ERROR_ENVELOPE = "error_envelope"
    TOKEN_EXPIRY = "token_expiry"


ALL_FAULTS = frozenset(Fault)
Probability = Field(default=0.0, ge=0.0, le=1.0)


class FaultProfile(BaseModel):
    """What goes wrong and how often. Probabilities are per request and mutually exclusive
    (one draw per request); if they sum above 1 the later kinds are starved."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0.0, description="added to every call")
    error_5xx: float = Probability
    rate_limit_429: float = Probability
    retry_after_seconds: float = Field(default=1.0, ge=0.0)
    timeout_after_commit: float = Probability
    hang_seconds: float = Field(default=15.0, ge=0.0, description="delay after commit")
    malformed: float = Probability
    error_envelope: float = Probability
    token_expiry: float = Probability
    seed: int | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "none": {},
        "flaky": {
            "error_5xx": 0.06,
            "rate_limit_429": 0.06,
            "timeout_after_commit": 0.04,
            "malformed": 0.05,
            "error_envelope": 0.05,
            "token_expiry": 0.04,
        },
        "outage": {"error_5xx": 1.0},
        "slow": {"latency_ms": 50.0},
    }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> FaultProfile:
        if name not in cls.PRESETS:
            raise ValueError(f"unknown fault preset {name!r}; known: {', '.join(cls.PRESETS)}")
        return cls.model_validate({**cls.PRESETS[name], **overrides})

    @classmethod
    def parse(cls, spec: str | None) -> FaultProfile:
        """CLI form: ``"flaky"``, ``"flaky,latency_ms=50"``, ``"error_5xx=0.2,seed=7"``."""
        preset, overrides = "none", {}
        for part in filter(None, (p.strip() for p in (spec or "").split(","))):
            if "=" in part:
                key, _, value = part.partition("=")
                overrides[key.strip()] = value.strip()
            else:
                preset = part
        return cls.preset(preset, **overrides)

    @classmethod
    def coerce(cls, value: FaultProfile | str | dict[str, Any] | None) -> FaultProfile:
        if isinstance(value, FaultProfile):
            return value
        if isinstance(value, dict):
            body = dict(value)
            preset = body.pop("preset", None)
            return cls.preset(preset, **body) if preset else cls.model_validate(body)
        return cls.parse(value)

    def weights(self) -> list[tuple[Fault, float]]:
        return [(kind, getattr(self, kind.value)) for kind in Fault]


class FaultInjector:
    """Draws at most one fault per request. Thread-safe (tests may swap the profile from
    their own thread); the lock is held for a few arithmetic operations only."""

    def __init__(self, profile: FaultProfile | None = None) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.set_profile(profile or FaultProfile())

    @property
    def profile(self) -> FaultProfile:
        return self._profile

    def set_profile(self, profile: FaultProfile) -> None:
        with self._lock:
            self._profile = profile
            self._weights = [(k, p) for k, p in profile.weights() if p > 0]
            self._rng = random.Random(profile.seed)

    def reset_counters(self) -> None:
        with self._lock:
            self.counters.clear()

    def draw(self, allowed: frozenset[Fault] = ALL_FAULTS) -> Fault | None:
        """One uniform draw walks the cumulative probabilities. A kind the endpoint cannot
        exhibit (e.g. token expiry on the login call) counts as no fault."""
        if not self._weights:
            return None
        with self._lock:
            roll = self._rng.random()
            for kind, probability in self._weights:
                roll -= probability
                if roll < 0:
                    if kind not in allowed:
                        return None
                    self.counters[kind.value] += 1
                    return kind
        return None

    def retry_after_header(self) -> str:
        """Seconds usually; an HTTP-date one time in three, as real proxies do."""
        seconds = self._profile.retry_after_seconds
        with self._lock:
            as_date = self._rng.random() < 1 / 3
        if as_date:
            # HTTP-dates have whole-second precision: round up so the wish is honoured.
            when = datetime.now(UTC) + timedelta(seconds=int(seconds) + 1)
            return format_datetime(when, usegmt=True)
        return str(int(seconds) if float(seconds).is_integer() else int(seconds) + 1)


# --------------------------------------------------------------------------- simulator base

HTML_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>Runtime Error</title></head><body>"
    "<h1>Server Error in '/' Application.</h1><p>See /Errors.axd for details.</p>"
    "</body></html>"
)


class BaseSimulator:
    """Shared behaviour of simulators. Subclasses implement :meth:`api_routes`,
    :meth:`snapshot`, :meth:`advance`, :meth:`clear` and :meth:`error_envelope`."""

    name: ClassVar[str] = "simulator"

    def __init__(self, faults: FaultProfile | str | dict[str, Any] | None = None) -> None:
        self.faults = FaultInjector(FaultProfile.coerce(faults))
        self.lock = threading.Lock()  # guards records against test-thread readers
        self._app: Starlette | None = None

    # -- to implement ---------------------------------------------------------------

    def api_routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        """Everything the department holds, JSON-ready (served at /__sim__/state)."""
        raise NotImplementedError

    def advance(self, count: int, *, close: bool = False, **options: Any) -> list[dict]:
        """Let crews work: progress (or close) up to `count` open records."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget every record (faults are reset separately)."""
        raise NotImplementedError

    def error_envelope(self) -> Response:
        """The department's "200 with an error inside" answer."""
        raise NotImplementedError

    # -- faults around a call -------------------------------------------------------

    def set_faults(self, faults: FaultProfile | str | dict[str, Any] | None) -> FaultProfile:
        profile = FaultProfile.coerce(faults)
        self.faults.set_profile(profile)
        return profile

    async def begin(
        self, allowed: frozenset[Fault] = ALL_FAULTS
    ) -> tuple[Fault | None, Response | None]:
        """Apply latency and draw a fault. Returns a response when the fault answers before
        the department does anything (5xx, 429, error envelope)."""
        profile = self.faults.profile
        if profile.latency_ms:
            await asyncio.sleep(profile.latency_ms / 1000)
        fault = self.faults.draw(allowed)
        if fault is Fault.ERROR_5XX:
            return fault, Response(HTML_ERROR_PAGE, status_code=503, media_type="text/html")
        if fault is Fault.RATE_LIMIT:
            headers = {"Retry-After": self.faults.retry_after_header()}
            return fault, JSONResponse({"Message": "Too many requests"}, 429, headers=headers)
        if fault is Fault.ERROR_ENVELOPE:
            return fault, self.error_envelope()
        return fault, None

    async def finish(self, fault: Fault | None, response: Response) -> Response:
        """Faults that strike after the department committed: garbage or a hang."""
        if fault is Fault.MALFORMED:
            return self.malformed(response)
        if fault is Fault.TIMEOUT_AFTER_COMMIT:
            await asyncio.sleep(self.faults.profile.hang_seconds)
        return response

    def malformed(self, response: Response) -> Response:
        """Alternate an HTML error page and the answer cut in half."""
        if self.faults.counters[Fault.MALFORMED.value] % 2:
            return Response(HTML_ERROR_PAGE, status_code=200, media_type="text/html")
        body = bytes(response.body)
        return Response(body[: max(1, len(body) // 2)], media_type="application/json")

    # -- admin routes ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            **self.snapshot(),
            "faults": dict(self.faults.counters),
            "profile": self.faults.profile.model_dump(),
        }

    def reset(self) -> None:
        self.clear()
        self.faults.reset_counters()

    async def _state_route(self, request: Request) -> Response:
        return JSONResponse(self.state())

    async def _faults_route(self, request: Request) -> Response:
        try:
            profile = self.set_faults(await _json_body(request))
        except (ValidationError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(profile.model_dump())

    async def _advance_route(self, request: Request) -> Response:
        body = await _json_body(request)
        count = int(body.pop("count", 1))
        close = bool(body.pop("close", False))
        try:
            changed = self.advance(count, close=close, **body)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"changed": changed})

    async def _reset_route(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True})

    def admin_routes(self) -> list[BaseRoute]:
        return [
            Route("/__sim__/state", self._state_route, methods=["GET"]),
            Route("/__sim__/faults", self._faults_route, methods=["POST"]),
            Route("/__sim__/advance", self._advance_route, methods=["POST"]),
            Route("/__sim__/reset", self._reset_route, methods=["POST"]),
        ]

    @property
    def app(self) -> Starlette:
        if self._app is None:
            self._app = Starlette(routes=[*self.admin_routes(), *self.api_routes()])
        return self._app


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    return body


# --------------------------------------------------------------------------- servers


def _uvicorn_config(app: Any, **kwargs: Any) -> uvicorn.Config:
    # Lean: no access log, no lifespan, warnings only (per-request logging costs req/s).
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", **kwargs)


class SimulatorServer:
    """Runs a simulator (or any ASGI app) with uvicorn in a background thread.

    Usage::

        with SimulatorServer(PublicWorksSimulator()) as server:
            httpx.get(server.url + "/__sim__/state")
    """

    def __init__(self, app: BaseSimulator | Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = app if isinstance(app, BaseSimulator) else None
        self.app = app.app if isinstance(app, BaseSimulator) else app
        self.host, self.port = host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> SimulatorServer:
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP; without it Nagle + delayed ACK add ~40 ms to every answer.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]  # port 0 → the one the OS chose
        self._server = uvicorn.Server(_uvicorn_config(self.app, timeout_graceful_shutdown=1))
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            daemon=True,
            name=f"simulator:{self.port}",
        )
        self._thread.start()
        self._wait_until_answering(timeout)
        return self

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server is not None and self._server.started:
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        return
                except OSError:
                    pass
            if self._thread is not None and not self._thread.is_alive():
                raise RuntimeError(f"simulator on port {self.port} failed to start")
            time.sleep(0.01)
        raise RuntimeError(f"simulator on port {self.port} did not answer within {timeout}s")

    def stop(self) -> None:
        if self._server is not None:
            # force_exit: do not wait for requests hanging in a timeout-after-commit fault.
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_forever(app: BaseSimulator | Any, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Block serving `app` (the standalone ``hub simulate <dept>`` command)."""
    asgi = app.app if isinstance(app, BaseSimulator) else app
    uvicorn.Server(_uvicorn_config(asgi, host=host, port=port)).run()
