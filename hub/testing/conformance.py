"""The adapter conformance kit: one line gives an adapter the hub's contract tests.

::

    from hub.testing.conformance import conformance_suite
    from adapters.streetlights import StreetlightsAdapter
    from adapters.streetlights.testing import StreetlightsHarness

    TestStreetlights = conformance_suite(StreetlightsAdapter, harness=StreetlightsHarness)

The generated class runs the adapter against its department simulator (a real server on
loopback) and the real hub engine (intake + dispatcher on SQLite in ``tmp_path``). Tests of
a capability the adapter does not declare are skipped with that reason; nothing else is
ever skipped silently. See docs/adding-an-adapter.md.

Modelled on Singer SDK's ``get_tap_test_class`` (a factory returning a pytest class) and
Airbyte's acceptance tests (every connector ships an invalid scenario): the harness must
say how to make the department refuse an order, so "4xx → dead letter" is always tested.
"""

from __future__ import annotations

import asyncio
import functools
import re
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from hub.adapters import (
    Adapter,
    AuthFailed,
    Capability,
    CapabilityNotSupported,
    DeliveryError,
    ExternalRef,
    MalformedResponse,
    OutboundNote,
    OutboundWorkOrder,
    Permanent,
    SecretSourceError,
    StatusPage,
    Transient,
    resolve_secret_reference,
)
from hub.config import ConfigError, DepartmentConfig, HubConfig, WorkerConfig, build_adapter
from hub.hookspecs import hookimpl
from hub.mapping import DepartmentMapping, MappingSet, UnmappedStatus, load_mappings, mappings_dir
from hub.model import Case, DeliveryState, new_hub_id
from hub.plugins import make_plugin_manager
from hub.services.dispatch import Dispatcher
from hub.services.intake import IntakeService
from hub.services.runtime import Hub
from hub.store.migrate import upgrade
from hub.testing.harness import FAST_DELIVERY
from hub.testing.simulators.base import BaseSimulator, SimulatorServer

__all__ = ["AdapterConformance", "AdapterHarness", "ConformanceKit", "conformance_suite"]

SOURCE_SYSTEM = "conformance"
DRAIN_SECONDS = 15.0
# Names that hold credentials; such a field typed `str` would leak into dumps and errors.
SECRET_NAME = re.compile(
    r"(^|_)(password|passwd|passphrase|secret|token|api_?key|private_key|credentials?)$"
)
# Which method implements a capability (the others have no method of their own).
CAPABILITY_METHODS = {
    Capability.CREATE: "create",
    Capability.FIND_BY_REFERENCE: "find_by_reference",
    Capability.CANCEL: "cancel",
    Capability.ADD_NOTE: "add_note",
    Capability.ATTACH: "attach",
    Capability.STATUS_POLL: "poll_changes",
}


# --------------------------------------------------------------------------- the harness


class AdapterHarness:
    """How the kit drives one adapter against a simulator of its department.

    Subclass it next to the adapter (e.g. ``adapters/<dept>/testing.py``) and implement
    :meth:`simulator`, :meth:`settings`, :meth:`sample_case` and :meth:`invalid_order`.
    """

    #: the mapping department the sample case routes to (also the hub department name)
    department: str = ""
    #: environment the settings' ``{env: NAME}`` references need (the kit sets it per test)
    env: dict[str, str] = {}
    #: mappings directory (default: ``$HUB_MAPPINGS_DIR`` or ``./mappings``)
    mappings: Path | None = None
    #: the adapter's per-request timeout in the kit; keep it below `hang_seconds`
    timeout_seconds: float = 0.5
    #: how long the simulator hangs after committing (timeout-after-commit fault)
    hang_seconds: float = 1.0
    #: the Retry-After the simulator sends with 429
    retry_after_seconds: int = 7
    #: config fields whose names look secret but are not (e.g. a ``token_url``)
    public_fields: frozenset[str] = frozenset()

    def simulator(self) -> BaseSimulator:
        """A fresh simulator of the department (started once per test class)."""
        raise NotImplementedError(f"{type(self).__name__}.simulator()")

    def settings(self, url: str) -> dict[str, Any]:
        """Adapter settings for a simulator running at `url`: secrets as ``{env: NAME}``
        or ``{file: PATH}``, exactly like a department's ``settings`` in hub.yaml."""
        raise NotImplementedError(f"{type(self).__name__}.settings()")

    def sample_case(self, source_id: str) -> Case:
        """A valid case that routes to :attr:`department`. Same `source_id`, same request."""
        raise NotImplementedError(f"{type(self).__name__}.sample_case()")

    def invalid_order(self, hub_id: str) -> OutboundWorkOrder | None:
        """An order the department refuses on validation (its 4xx): must raise Permanent."""
        return None

    #: contract tests that cannot apply to this transport → the reason (shown as the skip)
    not_applicable: dict[str, str] = {}

    # -- file exchange (only for adapters declaring Capability.FILE_EXCHANGE) -------------

    def outbound_files(self, kit: ConformanceKit) -> dict[str, bytes]:
        """Batch files visible under their final names (the contractor's view)."""
        raise NotImplementedError(f"{type(self).__name__}.outbound_files()")

    def batch_is_complete(self, kit: ConformanceKit, name: str, data: bytes) -> bool:
        """Whether `data` is the whole batch `name` (e.g. its checksum matches)."""
        raise NotImplementedError(f"{type(self).__name__}.batch_is_complete()")

    async def crash_mid_batch(self, kit: ConformanceKit, orders: list[OutboundWorkOrder]) -> None:
        """Send `orders` with an adapter that dies after the batch file is in place but
        before the adapter recorded it as sent (the worst moment for a kill -9)."""
        raise NotImplementedError(f"{type(self).__name__}.crash_mid_batch()")

    def drop_inbound(self, kit: ConformanceKit, name: str, data: bytes) -> None:
        """Put a file where the department's ack/status files arrive."""
        raise NotImplementedError(f"{type(self).__name__}.drop_inbound()")

    def inbound_file(self, kit: ConformanceKit, hub_id: str) -> tuple[str, bytes]:
        """A well-formed status file (name, bytes) closing `hub_id`."""
        raise NotImplementedError(f"{type(self).__name__}.inbound_file()")

    def quarantined(self, kit: ConformanceKit) -> dict[str, str]:
        """Quarantined inbound files: quarantine name → the recorded reason."""
        raise NotImplementedError(f"{type(self).__name__}.quarantined()")

    def count_records(self, state: dict[str, Any], hub_id: str) -> int:
        """Work orders the department holds for `hub_id`, from ``GET /__sim__/state``.

        Default: the simulator's shared ``duplicates``/``create_calls`` counters (exact when
        every create succeeded); override when the state lists records by reference."""
        duplicates = state.get("duplicates") or {}
        if hub_id in duplicates:
            return int(duplicates[hub_id])
        return 1 if (state.get("create_calls") or {}).get(hub_id) else 0


# --------------------------------------------------------------------------- the kit


class _AdapterPlugin:
    """Registers the adapter under test, so it needs no installed entry point yet."""

    def __init__(self, adapter_cls: type[Adapter]) -> None:
        self.adapter_cls = adapter_cls

    @hookimpl
    def hub_register_adapters(self) -> list[type[Adapter]]:
        return [self.adapter_cls]


@dataclass
class ConformanceKit:
    """What one conformance test works with: the simulator, settings, adapters, a hub."""

    adapter_cls: type[Adapter]
    harness: AdapterHarness
    url: str
    tmp_path: Path
    mappings: MappingSet
    monkeypatch: pytest.MonkeyPatch

    @property
    def department(self) -> str:
        return self.harness.department

    @property
    def mapping(self) -> DepartmentMapping:
        return self.mappings.departments[self.department]

    def supports(self, capability: Capability) -> bool:
        return capability in self.adapter_cls.capabilities

    # -- simulator admin (over HTTP, like an operator) ------------------------------

    def admin(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.url}/__sim__/{path}"
        response = (
            httpx.get(url, timeout=10) if body is None else httpx.post(url, json=body, timeout=10)
        )
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self.admin("reset", {})
        self.faults()

    def faults(self, **profile: Any) -> None:
        """Set the fault profile; no arguments turns every fault off."""
        self.admin("faults", profile)

    def state(self) -> dict[str, Any]:
        return self.admin("state")

    def records(self, hub_id: str) -> int:
        return self.harness.count_records(self.state(), hub_id)

    def create_calls(self, hub_id: str) -> int:
        return int((self.state().get("create_calls") or {}).get(hub_id, 0))

    # -- config and adapters -------------------------------------------------------

    def settings(self, **overrides: Any) -> dict[str, Any]:
        base = self.harness.settings(self.url)
        return {**base, "timeout_seconds": self.harness.timeout_seconds, **overrides}

    def build(self, settings: dict[str, Any] | None = None) -> Adapter:
        """The adapter built the way the hub builds it (ConfigError on bad settings)."""
        dept = DepartmentConfig(adapter=self.adapter_cls.name, settings=settings or self.settings())
        return build_adapter(self.department, dept, self.adapter_cls, source=None)

    def config_error(self, settings: dict[str, Any]) -> str:
        """The hub's error text for bad settings; fails the test if they were accepted."""
        try:
            self.build(settings)
        except ConfigError as error:
            return str(error)
        pytest.fail(f"settings were accepted but should be refused: {sorted(settings)}")

    @asynccontextmanager
    async def adapter(self, settings: dict[str, Any] | None = None) -> AsyncIterator[Adapter]:
        adapter = self.build(settings)
        try:
            yield adapter
        finally:
            await adapter.aclose()

    def secret_fields(self) -> list[str]:
        return [n for n, f in self.adapter_cls.config_model.model_fields.items() if _is_secret(f)]

    def secret_values(self) -> list[str]:
        """The real secrets the harness settings point at (must never appear in output)."""
        base = self.harness.settings(self.url)
        values = [
            resolve_secret_reference(base[n], field=n) for n in self.secret_fields() if n in base
        ]
        return [str(v) for v in values if v]

    # -- cases and orders ------------------------------------------------------------

    def case(self, source_id: str) -> Case:
        case = self.harness.sample_case(source_id)
        case.source_system = case.source_system or SOURCE_SYSTEM
        case.source_id = source_id
        case.hub_id = new_hub_id(case.source_system, source_id, case.requested_datetime)
        return case

    def order(self, source_id: str) -> OutboundWorkOrder:
        """The order the engine would send for the sample case (routing + mapping)."""
        case = self.case(source_id)
        route = self.mappings.route(case)
        assert route is not None and route.department == self.department, (
            f"sample_case({source_id!r}) must route to {self.department!r}, got {route}"
        )
        case.department, case.work_order_type, case.team = (
            route.department,
            route.work_order_type,
            route.team,
        )
        if route.priority is not None:
            case.priority = route.priority
        return OutboundWorkOrder(
            hub_id=case.hub_id,
            department=self.department,
            work_order_type=route.work_order_type,
            priority=case.priority.value,
            payload=self.mapping.build_payload(case),
        )

    # -- the engine ------------------------------------------------------------------

    @asynccontextmanager
    async def hub(self) -> AsyncIterator[Hub]:
        """A hub on SQLite in tmp_path with only this department, against the simulator."""
        url = f"sqlite:///{self.tmp_path / f'hub-{uuid.uuid4().hex[:8]}.db'}"
        upgrade(url)
        pm = make_plugin_manager(load_entry_points=False)
        pm.register(_AdapterPlugin(self.adapter_cls), name=f"conformance:{self.adapter_cls.name}")
        dept = DepartmentConfig(
            adapter=self.adapter_cls.name, settings=self.settings(), delivery=FAST_DELIVERY
        )
        config = HubConfig(
            mappings=self.harness.mappings or mappings_dir(),
            departments={self.department: dept},
            worker=WorkerConfig(idle_poll_seconds=0.02),
        )
        hub = Hub(config, database=url, plugin_manager=pm, mappings=self.mappings)
        try:
            yield hub
        finally:
            await hub.aclose()
            hub.dispose()

    async def drain(self, hub: Hub, *, until_empty: bool = True) -> Dispatcher:
        dispatcher = Dispatcher(hub, worker_id="conformance")
        if until_empty:
            await dispatcher.run(until_empty=True, timeout=DRAIN_SECONDS)
        else:
            await dispatcher.run(drain=True, timeout=DRAIN_SECONDS)
        return dispatcher


# --------------------------------------------------------------------------- helpers

T = TypeVar("T", bound=DeliveryError)


def _is_secret(field: Any) -> bool:
    return _mentions_secret(field.annotation)


def _mentions_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_mentions_secret(a) for a in get_args(annotation))


def _marked_secret(prop: dict[str, Any]) -> bool:
    if prop.get("writeOnly") or prop.get("format") == "password":
        return True
    return any(_marked_secret(p) for p in prop.get("anyOf", []) + prop.get("allOf", []))


def _wrong_value(annotation: Any) -> Any:
    """A value of the wrong type for a scalar field (None: not a scalar we can test)."""
    kinds = {a for a in (annotation, *get_args(annotation)) if isinstance(a, type)}
    if kinds & {int, float}:
        return "not-a-number"
    if bool in kinds:
        return "perhaps"
    if str in kinds:
        return ["not", "a", "string"]
    return None


async def expect_error(call: Awaitable[Any], expected: type[T], what: str) -> T:
    """Await `call`; it must raise `expected` (a classified hub error)."""
    try:
        result = await call
    except DeliveryError as error:
        assert isinstance(error, expected), (
            f"{what}: raised {type(error).__name__}({error}), expected {expected.__name__}"
        )
        return error
    except Exception as error:
        pytest.fail(
            f"{what}: raised unclassified {type(error).__qualname__}; adapters must raise "
            "hub.adapters errors (Transient, Permanent, AuthFailed, UnknownOutcome)"
        )
    pytest.fail(f"{what}: returned {result!r}, expected {expected.__name__}")


def _error_text(error: BaseException) -> str:
    """Everything a log line or traceback of `error` could show, chained causes included."""
    return "\n".join([str(error), repr(error), *traceback.format_exception(error)])


def requires(*capabilities: Capability) -> Callable[[Callable], Callable]:
    """Run the test only when the adapter declares every one of `capabilities`."""

    def mark(test: Callable) -> Callable:
        test._requires = frozenset(capabilities)  # type: ignore[attr-defined]
        return test

    return mark


def synced(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in its own event loop: the kit works whatever the adopting
    project's pytest-asyncio mode is (or without pytest-asyncio at all)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


# --------------------------------------------------------------------------- the suite


class AdapterConformance:
    """The contract tests. Not collected itself: :func:`conformance_suite` subclasses it."""

    adapter_cls: ClassVar[type[Adapter]]
    harness: ClassVar[AdapterHarness]

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_server(cls) -> Iterator[SimulatorServer]:
        with SimulatorServer(cls.harness.simulator()) as server:
            yield server

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_mappings(cls) -> MappingSet:
        return load_mappings(cls.harness.mappings)

    @pytest.fixture
    def kit(
        self,
        conformance_server: SimulatorServer,
        conformance_mappings: MappingSet,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> ConformanceKit:
        for name, value in self.harness.env.items():
            monkeypatch.setenv(name, value)
        kit = ConformanceKit(
            self.adapter_cls,
            self.harness,
            conformance_server.url,
            tmp_path,
            conformance_mappings,
            monkeypatch,
        )
        kit.reset()
        return kit

    # -- declaration -----------------------------------------------------------------

    def test_declared_capabilities_are_implemented(self, kit: ConformanceKit) -> None:
        """A declared capability whose method is the base one would be skipped forever."""
        missing = [
            f"{cap.value} → {method}()"
            for cap, method in CAPABILITY_METHODS.items()
            if kit.supports(cap) and getattr(kit.adapter_cls, method) is getattr(Adapter, method)
        ]
        assert not missing, f"{kit.adapter_cls.__name__} declares but does not implement {missing}"

    # -- config ----------------------------------------------------------------------

    def test_config_schema_marks_every_secret(self, kit: ConformanceKit) -> None:
        model = kit.adapter_cls.config_model
        props = model.model_json_schema()["properties"]
        secrets = kit.secret_fields()
        unmarked = [n for n in secrets if not _marked_secret(props.get(n, {}))]
        assert not unmarked, f"{model.__name__}: secrets not writeOnly in the schema: {unmarked}"
        assert set(model.secret_fields()) == set(secrets), (
            f"{model.__name__}.secret_fields() is {model.secret_fields()}, fields typed"
            f" SecretStr are {secrets}"
        )
        plain = [
            n
            for n in model.model_fields
            if SECRET_NAME.search(n) and n not in secrets and n not in kit.harness.public_fields
        ]
        assert not plain, (
            f"{model.__name__}: {plain} look like credentials but are not typed SecretStr"
            " (or list them in the harness's public_fields)"
        )

    def test_config_refuses_a_literal_secret_without_echoing_it(self, kit: ConformanceKit) -> None:
        secrets = kit.secret_fields()
        if not secrets:
            pytest.skip(f"{kit.adapter_cls.config_model.__name__} has no SecretStr field")
        for name in secrets:
            literal = f"literal-{uuid.uuid4().hex}"
            message = kit.config_error(kit.settings(**{name: literal}))
            assert name in message and "env" in message, f"unclear refusal: {message}"
            assert literal not in message, f"the refused secret is echoed: {message}"
            with pytest.raises((ValidationError, SecretSourceError)) as raw:
                kit.adapter_cls.from_settings(kit.settings(**{name: literal}))
            assert literal not in _error_text(raw.value), "from_settings echoes the secret"

    def test_config_errors_name_the_field(self, kit: ConformanceKit) -> None:
        model = kit.adapter_cls.config_model
        valid = kit.settings()
        kit.build(valid)  # the harness settings themselves must be accepted
        for name, field in model.model_fields.items():
            if field.is_required():
                message = kit.config_error({k: v for k, v in valid.items() if k != name})
                assert name in message, f"missing {name!r} not named: {message}"
            wrong = None if _is_secret(field) else _wrong_value(field.annotation)
            if wrong is not None:
                message = kit.config_error({**valid, name: wrong})
                assert name in message, f"wrong type for {name!r} not named: {message}"

    def test_config_unset_env_variable_is_named(self, kit: ConformanceKit) -> None:
        secrets = kit.secret_fields()
        if not secrets:
            pytest.skip(f"{kit.adapter_cls.config_model.__name__} has no SecretStr field")
        for name in secrets:
            variable = f"HUB_CONFORMANCE_UNSET_{uuid.uuid4().hex[:8].upper()}"
            kit.monkeypatch.delenv(variable, raising=False)
            message = kit.config_error(kit.settings(**{name: {"env": variable}}))
            assert variable in message and name in message, f"unclear error: {message}"

    # -- create and look up ------------------------------------------------------------

    @requires(Capability.CREATE)
    @synced
    async def test_create_returns_an_external_ref(self, kit: ConformanceKit) -> None:
        order = kit.order("create")
        async with kit.adapter() as adapter:
            ref = await adapter.create(order)
        assert isinstance(ref, ExternalRef) and ref.external_id, f"create returned {ref!r}"
        assert ref.hub_reference in (None, order.hub_id), f"foreign hub_reference in {ref!r}"
        assert kit.records(order.hub_id) == 1

    @requires(Capability.CREATE, Capability.FIND_BY_REFERENCE)
    @synced
    async def test_find_by_reference_finds_the_created_work_order(
        self, kit: ConformanceKit
    ) -> None:
        order = kit.order("find")
        async with kit.adapter() as adapter:
            ref = await adapter.create(order)
            found = await adapter.find_by_reference(order.hub_id)
            unknown = await adapter.find_by_reference(new_hub_id(SOURCE_SYSTEM, "never-sent"))
        assert found is not None and found.external_id == ref.external_id, (
            f"find_by_reference({order.hub_id!r}) gave {found!r}, create gave {ref!r}"
        )
        assert unknown is None, f"an unknown reference must give None, got {unknown!r}"

    # -- through the engine ------------------------------------------------------------

    @requires(Capability.CREATE)
    @synced
    async def test_duplicate_submit_gives_one_work_order(self, kit: ConformanceKit) -> None:
        async with kit.hub() as hub:
            intake = IntakeService(hub)
            first = intake.submit(kit.case("duplicate"))
            second = intake.submit(kit.case("duplicate"))
            routed = first.route.department if first.route else None
            assert first.created and routed == kit.department, f"sample case routed to {routed}"
            assert not second.created and second.case.hub_id == first.case.hub_id
            await kit.drain(hub)
            hub_id = first.case.hub_id
            with hub.uow() as uow:
                order = uow.work_orders.get(hub_id, kit.department)
        assert order is not None and order.delivery_state is DeliveryState.DELIVERED, order
        count = kit.records(hub_id)
        assert count == 1, f"the department holds {count} work orders for one submitted case"

    @requires(Capability.CREATE, Capability.FIND_BY_REFERENCE)
    @synced
    async def test_unknown_outcome_is_resolved_by_lookup(self, kit: ConformanceKit) -> None:
        async with kit.hub() as hub:
            intake = IntakeService(hub)
            intake.submit(kit.case("warm-up"))
            await kit.drain(hub)  # the hub's adapter is logged in: the fault hits the create
            kit.faults(timeout_after_commit=1.0, hang_seconds=kit.harness.hang_seconds)
            hub_id = intake.submit(kit.case("lost-answer")).case.hub_id
            await kit.drain(hub, until_empty=False)  # one attempt: committed, answer lost
            assert kit.create_calls(hub_id) == 1, "the timeout-after-commit fault did not strike"
            kit.faults()
            await kit.drain(hub)
            with hub.uow() as uow:
                order = uow.work_orders.get(hub_id, kit.department)
        count, calls = kit.records(hub_id), kit.create_calls(hub_id)
        assert (count, calls) == (1, 1), (
            f"after a lost answer the department holds {count} work orders from {calls} create"
            " calls: find_by_reference must find the committed one before creating again"
        )
        assert order is not None and order.delivery_state is DeliveryState.DELIVERED, order
        async with kit.adapter() as adapter:
            found = await adapter.find_by_reference(hub_id)
        assert found is not None and found.external_id == order.external_id

    # -- classification ----------------------------------------------------------------

    async def _calls(self, kit: ConformanceKit, adapter: Adapter) -> list[tuple[str, Any]]:
        """The calls each fault is tried on, after a warm-up call (so auth is cached)."""
        calls: list[tuple[str, Any]] = []
        if kit.supports(Capability.FIND_BY_REFERENCE):
            await adapter.find_by_reference(new_hub_id(SOURCE_SYSTEM, "warm-up"))
            calls.append(("find_by_reference", lambda: adapter.find_by_reference("x")))
        if kit.supports(Capability.CREATE):
            order = kit.order(uuid.uuid4().hex)
            if not calls:
                await adapter.create(kit.order("warm-up"))
            calls.append(("create", lambda: adapter.create(order)))
        return calls

    @requires(Capability.CREATE)
    @synced
    async def test_5xx_is_transient(self, kit: ConformanceKit) -> None:
        async with kit.adapter() as adapter:
            calls = await self._calls(kit, adapter)
            kit.faults(error_5xx=1.0)
            for name, call in calls:
                await expect_error(call(), Transient, f"{name} under HTTP 503")

    @requires(Capability.CREATE)
    @synced
    async def test_429_is_transient_with_retry_after(self, kit: ConformanceKit) -> None:
        wish = kit.harness.retry_after_seconds
        async with kit.adapter() as adapter:
            calls = await self._calls(kit, adapter)
            kit.faults(rate_limit_429=1.0, retry_after_seconds=wish)
            for name, call in calls * 3:  # Retry-After comes as seconds or as an HTTP-date
                error = await expect_error(call(), Transient, f"{name} under 429")
                assert error.not_applied, f"{name}: a 429 must say not_applied (no lookup)"
                assert error.retry_after is not None, f"{name}: Retry-After not parsed"
                assert wish - 2 <= error.retry_after <= wish + 2, (
                    f"{name}: retry_after {error.retry_after}, the department said ~{wish}"
                )

    @requires(Capability.CREATE)
    @synced
    async def test_malformed_answer_is_malformed_response(self, kit: ConformanceKit) -> None:
        async with kit.adapter() as adapter:
            calls = await self._calls(kit, adapter)
            kit.faults(malformed=1.0)
            for name, call in calls * 2:  # an HTML error page, then an answer cut in half
                await expect_error(call(), MalformedResponse, f"{name} with a malformed body")

    @requires(Capability.CREATE)
    @synced
    async def test_error_envelope_is_not_success(self, kit: ConformanceKit) -> None:
        async with kit.adapter() as adapter:
            calls = await self._calls(kit, adapter)
            kit.faults(error_envelope=1.0)
            for name, call in calls:
                error = await expect_error(call(), DeliveryError, f"{name} with an error envelope")
                assert not isinstance(error, CapabilityNotSupported)

    @requires(Capability.CREATE)
    @synced
    async def test_refused_order_is_permanent(self, kit: ConformanceKit) -> None:
        order = kit.harness.invalid_order(new_hub_id(SOURCE_SYSTEM, "refused"))
        assert order is not None, (
            f"{type(kit.harness).__name__}.invalid_order() must return an order the department"
            " refuses, so that a validation error is proven to dead-letter (Permanent)"
        )
        async with kit.adapter() as adapter:
            error = await expect_error(
                adapter.create(order), Permanent, "create of invalid_order()"
            )
        assert not isinstance(error, CapabilityNotSupported), error

    @requires(Capability.CREATE)
    @synced
    async def test_bad_credentials_are_auth_failed_and_do_not_leak(
        self, kit: ConformanceKit, caplog: pytest.LogCaptureFixture
    ) -> None:
        secrets = kit.secret_fields()
        if not secrets:
            pytest.skip(f"{kit.adapter_cls.config_model.__name__} has no credentials")
        wrong = {}
        for name in secrets:
            variable = f"HUB_CONFORMANCE_WRONG_{name.upper()}"
            wrong[name] = f"wrong-{uuid.uuid4().hex}"
            kit.monkeypatch.setenv(variable, wrong[name])
        settings = kit.settings(**{n: {"env": f"HUB_CONFORMANCE_WRONG_{n.upper()}"} for n in wrong})
        async with kit.adapter(settings) as adapter:
            error = await expect_error(adapter.create(kit.order("auth")), AuthFailed, "create")
        text = _error_text(error) + caplog.text
        # Named, not shown: the failure message itself must not print a secret.
        leaked = [f"wrong {n}" for n, v in wrong.items() if v in text]
        leaked += ["a configured secret" for v in kit.secret_values() if v in text]
        assert not leaked, f"{leaked} appear in the AuthFailed error, its traceback or the log"

    # -- status --------------------------------------------------------------------------

    def test_every_status_code_is_mapped(self, kit: ConformanceKit) -> None:
        codes = kit.build().status_codes()
        if kit.supports(Capability.STATUS_POLL) or kit.supports(Capability.STATUS_PUSH):
            assert codes, "status sync is declared but status_codes() is empty"
        unmapped = []
        for code in sorted(codes):
            try:
                kit.mapping.map_status_in(code)
            except UnmappedStatus:
                unmapped.append(code)
        assert not unmapped, f"{kit.mapping.source}: status_in lacks {unmapped} (map or ignore)"

    @requires(Capability.CREATE, Capability.STATUS_POLL)
    @synced
    async def test_poll_changes_reports_the_closure(self, kit: ConformanceKit) -> None:
        since = datetime.now(UTC) - timedelta(seconds=5)
        order = kit.order("poll")
        async with kit.adapter() as adapter:
            ref = await adapter.create(order)
            kit.admin("advance", {"count": 1, "close": True})
            page = await adapter.poll_changes(since)
            again = await adapter.poll_changes(since)
            codes = adapter.status_codes()
        assert isinstance(page, StatusPage), f"poll_changes returned {page!r}"
        ids = [e.external_event_id for e in page.events]
        assert len(ids) == len(set(ids)), f"external_event_id repeats: {ids}"
        for event in page.events:
            assert event.occurred_at.utcoffset() == timedelta(0), event
            assert event.raw_code in codes, f"{event.raw_code!r} is not in status_codes()"
        ours = [e for e in page.events if e.external_id == ref.external_id]
        assert ours, f"no event for work order {ref.external_id}: {page.events}"
        assert all(e.hub_reference == order.hub_id for e in ours), ours
        closing = max(ours, key=lambda e: (e.sequence or "", e.occurred_at))
        mapped = kit.mapping.map_status_in(closing.raw_code)
        assert mapped is not None and mapped.status.is_final, (
            f"closing status {closing.raw_code!r} maps to {mapped}, not a final status"
        )
        assert closing.external_event_id in {e.external_event_id for e in again.events}, (
            "event ids must be stable across polls (the hub deduplicates on them)"
        )
        mark = page.next_watermark
        assert mark is None or mark.utcoffset() == timedelta(0), f"naive watermark {mark}"

    # -- follow-up operations ------------------------------------------------------------

    @requires(Capability.CREATE, Capability.ADD_NOTE)
    @synced
    async def test_add_note(self, kit: ConformanceKit) -> None:
        async with kit.adapter() as adapter:
            ref = await adapter.create(kit.order("note"))
            result = await adapter.add_note(ref.external_id, OutboundNote(text="Resident called"))
        assert result is None

    @requires(Capability.CREATE, Capability.CANCEL)
    @synced
    async def test_cancel_is_idempotent(self, kit: ConformanceKit) -> None:
        order = kit.order("cancel")
        async with kit.adapter() as adapter:
            ref = await adapter.create(order)
            await adapter.cancel(ref.external_id, "duplicate report")
            try:  # a retried cancel (the first answer was lost) must succeed too
                await adapter.cancel(ref.external_id, "duplicate report")
            except DeliveryError as error:
                pytest.fail(f"cancelling twice raised {type(error).__name__}({error})")
            found = None
            if kit.supports(Capability.FIND_BY_REFERENCE):
                found = await adapter.find_by_reference(order.hub_id)
        if found is not None and found.raw_status:
            mapped = kit.mapping.map_status_in(found.raw_status)
            assert mapped is not None and mapped.status.is_final, (
                f"after cancel the department says {found.raw_status!r} ({mapped})"
            )

    # -- file exchange ---------------------------------------------------------------

    @requires(Capability.CREATE, Capability.FILE_EXCHANGE)
    @synced
    async def test_file_exchange_write_is_atomic(self, kit: ConformanceKit) -> None:
        """No reader ever sees a partial batch under its final name."""
        seen: dict[str, bool] = {}
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                files = await asyncio.to_thread(kit.harness.outbound_files, kit)
                for name, data in files.items():
                    seen[name] = seen.get(name, True) and kit.harness.batch_is_complete(
                        kit, name, data
                    )
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        async with kit.adapter() as adapter:
            for round_ in range(3):
                orders = [kit.order(f"atomic-{round_}-{n}") for n in range(20)]
                await asyncio.gather(*(adapter.create(o) for o in orders))
        stop.set()
        await watcher
        seen.update({n: kit.harness.batch_is_complete(kit, n, d)
                     for n, d in kit.harness.outbound_files(kit).items()})  # fmt: skip
        assert seen, "no batch file became visible"
        partial = sorted(n for n, complete in seen.items() if not complete)
        assert not partial, f"partial batch files visible under their final names: {partial}"

    @requires(Capability.CREATE, Capability.FIND_BY_REFERENCE, Capability.FILE_EXCHANGE)
    @synced
    async def test_file_exchange_rerun_after_crash_sends_nothing_twice(
        self, kit: ConformanceKit
    ) -> None:
        orders = [kit.order(f"crash-{n}") for n in range(5)]
        await kit.harness.crash_mid_batch(kit, orders)
        for _ in range(2):  # a re-run after the crash, then another one
            async with kit.adapter() as adapter:
                for order in orders:
                    if await adapter.find_by_reference(order.hub_id) is None:
                        await adapter.create(order)
        counts = {o.hub_id: kit.records(o.hub_id) for o in orders}
        assert set(counts.values()) == {1}, f"work orders per case after re-runs: {counts}"

    @requires(Capability.STATUS_POLL, Capability.FILE_EXCHANGE)
    @synced
    async def test_file_exchange_quarantines_bad_inbound_files(self, kit: ConformanceKit) -> None:
        hub_id = new_hub_id(SOURCE_SYSTEM, "inbound")
        name, good = kit.harness.inbound_file(kit, hub_id)
        stem = name.rpartition(".")[0]
        bad = {
            f"{stem}_html.csv": b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>",
            f"{stem}_cut.csv": good[: len(good) * 2 // 3].rstrip(b"\r\n"),
            f"{stem}_again.csv": good,
        }
        since = datetime.now(UTC) - timedelta(seconds=5)
        kit.harness.drop_inbound(kit, name, good)
        async with kit.adapter() as adapter:
            first = await adapter.poll_changes(since)
            for bad_name, data in bad.items():
                kit.harness.drop_inbound(kit, bad_name, data)
            second = await adapter.poll_changes(since)
        assert any(e.hub_reference == hub_id for e in first.events), first.events
        assert {e.external_event_id for e in second.events} == {
            e.external_event_id for e in first.events
        }, "bad files must add no event"
        reasons = kit.harness.quarantined(kit)
        for bad_name in bad:
            hits = [r for q, r in reasons.items() if bad_name in q]
            assert hits and all(hits), f"{bad_name} not quarantined with a reason: {reasons}"
        assert not [q for q in reasons if q.endswith(name)], "the good file was quarantined"


# --------------------------------------------------------------------------- capability suites
# Enrichment (GIS) and payment adapters are not work-order targets: their contract is their
# lookups / intents, driven through harness hooks (AdapterHarness.sample_location, …).


class EnrichmentConformance:
    """Contract of ``Capability.ENRICH`` adapters (ArcGIS-shaped: geocode, reverse geocode,
    point-in-polygon ``locate``, ``nearest_asset``, ``enrich(case)``)."""

    @requires(Capability.ENRICH)
    @synced
    async def test_enrich_locates_a_known_point(self, kit: ConformanceKit) -> None:
        lat, long, facts = kit.harness.sample_location()  # type: ignore[attr-defined]
        async with kit.adapter() as adapter:
            _fresh_cache(adapter)
            found = await adapter.locate(lat, long)  # type: ignore[attr-defined]
            changes = await adapter.enrich(Case(service_code="POTHOLE", lat=lat, long=long))  # type: ignore[attr-defined]
        for name, value in facts.items():
            assert found.get(name) == value, f"locate: {name} {found.get(name)!r} != {value!r}"
            assert changes["attributes"].get(name) == value, f"enrich did not add {name}"

    @requires(Capability.ENRICH)
    @synced
    async def test_enrich_outside_the_service_area_finds_nothing(self, kit: ConformanceKit) -> None:
        lat, long = kit.harness.outside_location()  # type: ignore[attr-defined]
        async with kit.adapter() as adapter:
            _fresh_cache(adapter)
            found = await adapter.locate(lat, long)  # type: ignore[attr-defined]
            address = await adapter.reverse_geocode(lat, long)  # type: ignore[attr-defined]
        assert not any(found.values()), f"outside the city yet located: {found}"
        assert address is None, "no address is None, not an error"

    @requires(Capability.ENRICH)
    @synced
    async def test_enrich_errors_inside_200_are_classified(self, kit: ConformanceKit) -> None:
        lat, long, _ = kit.harness.sample_location()  # type: ignore[attr-defined]
        async with kit.adapter() as adapter:
            _fresh_cache(adapter)
            kit.faults(error_envelope=1.0)
            await expect_error(adapter.locate(lat, long), Transient, "error 500 in a 200 body")  # type: ignore[attr-defined]
            kit.faults(token_expiry=1.0)
            await expect_error(adapter.locate(lat, long), Transient, "498 after a fresh token")  # type: ignore[attr-defined]
            kit.faults(error_5xx=1.0)
            await expect_error(adapter.locate(lat, long), Transient, "HTTP 503")  # type: ignore[attr-defined]
            kit.faults()
            assert await adapter.locate(lat, long)  # type: ignore[attr-defined]

    @requires(Capability.ENRICH)
    @synced
    async def test_enrich_answers_from_cache_when_the_service_is_down(
        self, kit: ConformanceKit
    ) -> None:
        lat, long, facts = kit.harness.sample_location()  # type: ignore[attr-defined]
        case = Case(service_code="POTHOLE", lat=lat, long=long)
        async with kit.adapter() as adapter:
            _fresh_cache(adapter)
            await adapter.enrich(case)  # type: ignore[attr-defined]
            kit.faults(error_5xx=1.0)
            changes, complete = adapter.enrich_from_cache(case)  # type: ignore[attr-defined]
        assert complete, "a second lookup of the same point must not need the service"
        for name, value in facts.items():
            assert changes["attributes"].get(name) == value


class PaymentConformance:
    """Contract of ``Capability.PAYMENT`` adapters (Stripe-shaped PaymentIntents)."""

    @requires(Capability.PAYMENT)
    @synced
    async def test_payment_intent_is_idempotent_per_case(self, kit: ConformanceKit) -> None:
        case_id = new_hub_id(SOURCE_SYSTEM, f"fee-{uuid.uuid4().hex[:6]}")
        async with kit.adapter() as adapter:
            first = await adapter.create_intent(case_id, 2500, "USD")  # type: ignore[attr-defined]
            again = await adapter.create_intent(case_id, 2500, "USD")  # type: ignore[attr-defined]
            read = await adapter.get_intent(first.id)  # type: ignore[attr-defined]
        assert first.id == again.id == read.id, "a retried create made a second intent"
        assert isinstance(first.amount, int) and first.amount == 2500
        assert first.url, "the resident needs a place to pay"

    @requires(Capability.PAYMENT)
    @synced
    async def test_payment_amount_must_be_integer_minor_units(self, kit: ConformanceKit) -> None:
        async with kit.adapter() as adapter:
            await expect_error(adapter.create_intent("x", 25.0, "USD"), Permanent, "float amount")  # type: ignore[attr-defined]

    @requires(Capability.PAYMENT)
    @synced
    async def test_payment_errors_are_classified(self, kit: ConformanceKit) -> None:
        async with kit.adapter() as adapter:
            kit.faults(error_5xx=1.0)
            await expect_error(adapter.get_intent("pi_x"), Transient, "HTTP 503")  # type: ignore[attr-defined]
            kit.faults()
            await expect_error(adapter.get_intent("pi_missing"), Permanent, "unknown intent")  # type: ignore[attr-defined]

    @requires(Capability.PAYMENT)
    def test_payment_webhook_signatures(self, kit: ConformanceKit) -> None:
        body = b'{"id": "evt_1", "type": "payment_intent.succeeded"}'
        adapter = kit.build()
        good, forged = kit.harness.sign_webhook(body), kit.harness.sign_webhook(body, secret="x")  # type: ignore[attr-defined]
        adapter.verify_webhook(body, good)  # type: ignore[attr-defined]
        stale = kit.harness.sign_webhook(body, age_seconds=400)  # type: ignore[attr-defined]
        for header, what in (
            (forged, "forged"),
            (stale, "stale"),
            (None, "unsigned"),
            (good, "tampered body"),
        ):
            data = body + b" " if what == "tampered body" else body
            with pytest.raises(Exception) as refused:
                adapter.verify_webhook(data, header)  # type: ignore[attr-defined]
            assert not isinstance(refused.value, AssertionError), what


def _fresh_cache(adapter: Adapter) -> None:
    cache = getattr(adapter, "cache", None)
    if cache is not None and callable(getattr(cache, "clear", None)):
        cache.clear()


for _suite in (EnrichmentConformance, PaymentConformance):  # part of every generated class
    for _name, _test in vars(_suite).items():
        if _name.startswith("test_"):
            setattr(AdapterConformance, _name, _test)


# --------------------------------------------------------------------------- the factory


def conformance_suite(
    adapter_cls: type[Adapter],
    *,
    harness: AdapterHarness | type[AdapterHarness],
    name: str | None = None,
) -> type[AdapterConformance]:
    """A pytest class with every contract test for `adapter_cls`.

    Assign it to a ``Test*`` name in a test module. Tests needing a capability the adapter
    does not declare are skipped with the reason; subclass the result to add your own.
    """
    instance = harness() if isinstance(harness, type) else harness
    if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, Adapter)):
        raise TypeError(f"{adapter_cls!r} is not an Adapter subclass")
    if not instance.department:
        raise TypeError(f"{type(instance).__name__}.department is not set")
    namespace: dict[str, Any] = {"adapter_cls": adapter_cls, "harness": instance}
    for attr, test in vars(AdapterConformance).items():
        missing = getattr(test, "_requires", frozenset()) - adapter_cls.capabilities
        if attr.startswith("test_") and missing:
            declared = ", ".join(sorted(c.value for c in missing))
            namespace[attr] = _skipped(test, f"{adapter_cls.__name__} does not declare {declared}")
    for attr, reason in instance.not_applicable.items():
        namespace[attr] = _skipped(getattr(AdapterConformance, attr), f"not applicable: {reason}")
    class_name = name or f"Test{adapter_cls.__name__}Conformance"
    return type(class_name, (AdapterConformance,), namespace)


def _skipped(test: Callable, reason: str) -> Callable:
    """A fixture-free stand-in, so the skip needs neither the simulator nor a database."""

    def placeholder(self: Any) -> None:
        pytest.skip(reason)

    placeholder.__name__ = placeholder.__qualname__ = test.__name__
    placeholder.__doc__ = test.__doc__
    return pytest.mark.skip(reason=reason)(placeholder)
