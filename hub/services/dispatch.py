"""The delivery engine: claim due outbox rows, call adapters, settle outcomes durably.

One asyncio loop keeps many calls in flight. Each turn of the loop is one database
transaction that both settles the attempts that finished and claims new rows (group
commit), so the database is touched once per turn, not once per delivery.

Exactly-once rests on three things: the lease (a row is worked by one worker at a time,
and a crashed worker's row comes back when its lease expires), the fence (a worker that
lost its lease cannot settle the row), and lookup-before-create (any create attempt after
one that may have reached the department asks it for the hub id before creating again).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import random
import socket
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from time import perf_counter, thread_time
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

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
    Transient,
    UnknownOutcome,
)
from hub.config import ConfigError, DeliveryPolicy
from hub.mapping import PayloadError
from hub.model import (
    Attachment,
    Case,
    CaseEvent,
    CaseStatus,
    DeliveryState,
    EventLevel,
    WorkOrder,
    utcnow,
)
from hub.observability.logging import bind, unbind
from hub.observability.metrics import observe_attempt, observe_turn
from hub.services.retry import backoff_delay, circuit_allows, record_failure, record_success
from hub.services.runtime import DepartmentNotConfigured, Hub
from hub.services.status import advance_many
from hub.store.repository import DepartmentHealth, OutboxItem
from hub.store.uow import UnitOfWork

log = logging.getLogger(__name__)

# A rate-limited department's bucket holds at least a quarter second of calls: a burst
# after a pause overshoots a 5 s average by at most 5%. It must also hold what arrives
# between two refills, or tokens spill over a full bucket and the department is served
# under its limit: turns are serialised on the department's row lock, and under a deep
# queue one can take longer than a quarter second. So the bucket grows to twice this
# worker's recent turn time, at most half a second (the catch-up after a stall then adds
# at most 10% to a 5 s window). Slow turns come with load, when each turn empties the
# bucket; an idle hub turns fast, so the burst after a pause stays small.
BURST_SECONDS = 0.25
MAX_BURST_SECONDS = 0.5
TURN_SMOOTHING = 0.2  # weight of the newest turn in the moving average
# Group commit: finished calls wait for the next turn until as many as a claim brings have
# finished, at most this long, and only while claimed rows keep the calls going. A turn
# costs about the same for one attempt as for a batch; a latency-bound worker (8 calls in
# flight, 50 ms answers) that turned on every finished call spent a third more CPU per
# case. The wait adds at most this much to a case's way to "delivered".
GATHER_SECONDS = 0.05
# Claim-ahead: besides the calls in flight a worker holds up to a claim's worth of rows
# (batch_size), but no more than its calls get through in this long. A worker with few
# calls in flight then still settles a batch per turn: at one call in flight it claimed a
# single row ahead, so every case paid a whole turn and its commit (150-250 cases/s against
# a department answering at once; 500-700 with a batch ahead). The bound keeps a slow
# department's rows from waiting on one busy worker while another worker could call them.
PREFETCH_SECONDS = 1.0
CALL_SMOOTHING = 0.05  # weight of the newest call in the moving average of a call's time

# Outcomes of one attempt.
DELIVERED, ADOPTED, DONE = "delivered", "adopted", "done"
RETRY, DEAD, PAUSED, SKIPPED = "retry", "dead", "paused", "skipped"
SUCCESSES = {DELIVERED, ADOPTED, DONE}

# Operations that are not adapter calls (e.g. the CRM callback): the handler performs the
# attempt and returns a message, or raises a classified DeliveryError like an adapter.
# Their rows live under a pseudo-department, claimed alongside the configured ones.
OperationHandler = Callable[["Hub", "OutboxItem", Case, "WorkOrder | None"], Awaitable[str]]
OPERATIONS: dict[str, OperationHandler] = {}
PSEUDO_DEPARTMENTS: set[str] = set()


def register_operation(
    operation: str, handler: OperationHandler, *, department: str | None = None
) -> None:
    OPERATIONS[operation] = handler
    if department:
        PSEUDO_DEPARTMENTS.add(department)


@dataclass
class Attempt:
    item: OutboxItem
    outcome: str
    message: str
    error_class: str | None = None
    ref: ExternalRef | None = None
    retry_after: float | None = None
    duration_ms: float = 0.0
    request_digest: str | None = None
    looked_up: bool = False
    refused: bool = False  # the department provably did nothing with it (no lookup next)
    department_failure: bool = False  # counts toward the circuit breaker
    case: Case | None = None  # as read at claim time (its version guards the status step)


@dataclass
class DispatchStats:
    attempts: Counter = field(default_factory=Counter)
    claimed: int = 0
    lost_leases: int = 0
    stale_claims: int = 0  # claimed rows left to expire: they waited too long for a slot
    failed_turns: int = 0  # database errors (connection dropped, deadlock): turn retried
    # Where a worker's time goes, to tell a slow department from a busy store:
    concurrency: int = 0  # call slots
    run_seconds: float = 0.0  # wall time of Dispatcher.run
    slot_seconds: float = 0.0  # time attempts held a call slot, summed over attempts
    turns: int = 0  # database turns that committed
    turn_seconds: float = 0.0  # their wall time: statements, commits and waits for the GIL
    turn_cpu_seconds: float = 0.0  # the CPU the turn thread used in them

    def slots_busy(self) -> float:
        """Mean share of the call slots in use over the run. Near 1: the department's
        answers (or its limits) set the pace. Well below 1 with rows due: the worker's
        own turns and event loop do."""
        capacity = self.run_seconds * self.concurrency
        return min(1.0, self.slot_seconds / capacity) if capacity > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed,
            "lost_leases": self.lost_leases,
            "stale_claims": self.stale_claims,
            "failed_turns": self.failed_turns,
            "turns": self.turns,
            "turn_seconds": round(self.turn_seconds, 3),
            "turn_cpu_seconds": round(self.turn_cpu_seconds, 3),
            "run_seconds": round(self.run_seconds, 3),
            "slots_busy": round(self.slots_busy(), 3),
            **self.attempts,
        }


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.randrange(16**6):06x}"


def digest(payload: Any) -> str:
    """Fingerprint of what was sent: recorded instead of the payload (which holds PII)."""
    body = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()[:32]


Claimed = tuple[OutboxItem, Case, "WorkOrder | None"]

# Runs that hold the collector's permanent generation (see _frozen_heap); guarded by a lock
# because runs may start and end in several threads of one process.
_frozen = {"runs": 0, "owner": False}
_frozen_lock = threading.Lock()


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """The process's long-lived objects (plugins, mappings, pydantic and SQLAlchemy
    internals) out of the collector's sight while runs are going: a full collection walks
    them all, ~100 ms twice per 2,000 deliveries, a sixth of the hub's CPU. Objects made
    during the run are collected as usual; the heap is unfrozen when the last run ends,
    unless someone else (e.g. `hub serve`) had frozen it first, whose freeze is left alone."""
    with _frozen_lock:
        if _frozen["runs"] == 0:
            _frozen["owner"] = gc.get_freeze_count() == 0
        _frozen["runs"] += 1
        if _frozen["owner"]:
            gc.freeze()
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen["runs"] -= 1
            if _frozen["runs"] == 0 and _frozen["owner"]:
                gc.unfreeze()


class _Flow:
    """The calls of one Dispatcher.run: claimed rows waiting for a slot, calls in flight,
    and calls finished since the last turn. Completion callbacks wake the loop, so each
    finished call costs O(1) however many are in flight."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.ready: deque[tuple[float, Claimed]] = deque()
        self.inflight: set[asyncio.Task[Attempt]] = set()
        self.done_tasks: list[asyncio.Task[Attempt]] = []
        self.carry: list[Attempt] = []  # finished, in a turn that rolled back
        self.wake = asyncio.Event()

    def room(self) -> int:
        d = self.dispatcher
        return d.concurrency + d.prefetch() - len(self.inflight) - len(self.ready)

    def idle(self) -> bool:
        return not (self.inflight or self.ready or self.done_tasks or self.carry)

    async def turn(self, capacity: int) -> list[Claimed] | None:
        """One database turn in its thread; calls keep starting and finishing meanwhile."""
        finished = self.carry + [task.result() for task in self.done_tasks]
        self.done_tasks.clear()
        turn = asyncio.ensure_future(self.dispatcher._safe_turn(finished, capacity))
        turn.add_done_callback(self._woken)
        while not turn.done():
            self.wake.clear()
            self.start()
            if not turn.done():
                await self.wake.wait()
        claimed = turn.result()
        self.carry = finished if claimed is None else []
        if claimed:
            now = perf_counter()
            self.ready.extend((now, c) for c in claimed)
        self.start()
        return claimed

    def start(self) -> None:
        """Start waiting rows while slots are free. A row that waited past half its lease
        is left to expire and be claimed again (with the lookup a repeat attempt makes)
        rather than called late, when another worker may already hold it."""
        d = self.dispatcher
        stale_before = perf_counter() - d.lease.total_seconds() / 2
        while self.ready and len(self.inflight) < d.concurrency:
            claimed_at, (item, case, order) = self.ready.popleft()
            if claimed_at < stale_before:
                d.stats.stale_claims += 1
                continue
            task = asyncio.create_task(d._attempt(item, case, order))
            self.inflight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Attempt]) -> None:
        self.inflight.discard(task)
        if not task.cancelled():
            self.done_tasks.append(task)
        self.wake.set()

    def _woken(self, _: asyncio.Future) -> None:
        self.wake.set()

    async def gather(self, target: int, seconds: float) -> None:
        """Let finished calls gather for the next turn (group commit): until `target` have
        finished or `seconds` pass, and only while claimed rows keep the free slots busy.
        (See GATHER_SECONDS.)"""
        deadline = perf_counter() + seconds
        while len(self.done_tasks) < target and self.ready:
            left = deadline - perf_counter()
            if left <= 0:
                return
            self.wake.clear()
            self.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=left)

    async def wait(self, seconds: float) -> None:
        """Until a call finishes or `seconds` pass (the poll interval for new rows)."""
        if self.done_tasks:
            return
        self.wake.clear()
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=seconds)

    def cancel(self) -> None:
        for task in list(self.inflight):
            task.cancel()


class Dispatcher:
    def __init__(
        self,
        hub: Hub,
        *,
        worker_id: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        prefetch: int | None = None,
    ) -> None:
        self.hub = hub
        self.worker_id = worker_id or default_worker_id()
        self.clock = clock
        self.rng = rng or random.Random()
        cfg = hub.config.worker
        self.batch_size = cfg.batch_size
        self.concurrency = cfg.concurrency
        self.lease = timedelta(seconds=cfg.lease_seconds)
        self.idle_seconds = cfg.idle_poll_seconds
        self._fixed_prefetch = prefetch  # None: claim ahead by the calls' pace (prefetch())
        self.call_seconds = 0.0  # moving average of an attempt's time in its slot
        self.stats = DispatchStats(concurrency=self.concurrency)
        self.turn_seconds = 0.0  # moving average of a turn, lock waits included
        self._rotation = 0  # which free department claims first this turn
        # Departments found with nothing due are asked again after idle_seconds, the same
        # wait as an idle worker's, not on every turn: a busy worker's turns come every few
        # milliseconds, and each empty claim is a statement.
        self._nothing_due_until: dict[str, float] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    def prefetch(self) -> int:
        """Rows claimed beyond the calls in flight, ready to start the moment a call ends:
        at least one per call slot (up to a batch), and up to a whole batch while the
        calls get through it within PREFETCH_SECONDS."""
        if self._fixed_prefetch is not None:
            return self._fixed_prefetch
        floor = min(self.concurrency, self.batch_size)
        if self.call_seconds <= 0:
            return floor
        paced = int(self.concurrency * PREFETCH_SECONDS / self.call_seconds)
        return max(floor, min(self.batch_size, paced))

    def gather_target(self) -> int:
        """Finished calls a turn waits for (group commit): what a claim brings, or a
        quarter of the rows held ahead, so a turn settles a batch, not one case."""
        return max(1, min(self.concurrency, self.batch_size), self.prefetch() // 4)

    def _observe_call(self, seconds: float) -> None:
        if self.call_seconds <= 0:
            self.call_seconds = seconds
        self.call_seconds += CALL_SMOOTHING * (seconds - self.call_seconds)

    # ----------------------------------------------------------------------- loop

    async def run(
        self,
        *,
        stop: asyncio.Event | None = None,
        drain: bool = False,
        until_empty: bool = False,
        timeout: float | None = None,
    ) -> DispatchStats:
        """Work until stopped. `drain`: return when nothing is due. `until_empty`: return
        when no pending row is left at all (retries included). `timeout` caps the run.

        Turns are pipelined with the calls: while a turn settles and claims in its
        thread, calls keep finishing and claimed rows waiting in `ready` start at once,
        so the department is not left idle for the length of a database turn."""
        started = perf_counter()
        deadline = None if timeout is None else started + timeout
        flow = _Flow(self)
        try:
            with _frozen_heap():
                await self._loop(flow, stop, drain, until_empty, deadline)
        finally:
            flow.cancel()  # cancelled mid-flight: leases expire and another worker resumes
            self.stats.run_seconds += perf_counter() - started
        return self.stats

    async def _loop(
        self,
        flow: _Flow,
        stop: asyncio.Event | None,
        drain: bool,
        until_empty: bool,
        deadline: float | None,
    ) -> None:
        while True:
            stopping = (stop is not None and stop.is_set()) or (
                deadline is not None and perf_counter() > deadline
            )
            capacity = 0 if stopping else flow.room()
            claimed = await flow.turn(capacity)
            if claimed is None:  # rolled back: settle the same attempts next turn
                continue
            if stopping and flow.idle():
                return
            full = capacity > 0 and len(claimed) >= min(self.batch_size, capacity)
            if flow.done_tasks or (full and flow.room() > 0):
                # More to settle or, likely, more due: turn again once more calls have
                # finished (at once when no claimed row waits for a free slot).
                await flow.gather(self.gather_target(), GATHER_SECONDS)
                continue
            if not flow.inflight and not flow.ready:
                if drain and not claimed:
                    return
                if until_empty and not claimed and await asyncio.to_thread(self._empty):
                    return
                await self._idle(stop)
                continue
            await flow.wait(self.idle_seconds)

    async def _safe_turn(
        self, finished: list[Attempt], capacity: int
    ) -> list[tuple[OutboxItem, Case, WorkOrder | None]] | None:
        """A turn, or None when the database failed it (backend terminated, failover,
        deadlock): the transaction rolled back, so nothing was settled or claimed and the
        worker carries on instead of dying. pool_pre_ping replaces the dead connection."""
        try:
            return await asyncio.to_thread(self._turn, finished, capacity)
        except (OperationalError, InterfaceError) as error:
            self.stats.failed_turns += 1
            log.warning("turn failed, retrying: %s", str(error).splitlines()[0])
            await asyncio.sleep(self.idle_seconds)
            return None

    async def _idle(self, stop: asyncio.Event | None) -> None:
        if stop is None:
            await asyncio.sleep(self.idle_seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=self.idle_seconds)

    def _empty(self) -> bool:
        with self.hub.uow() as uow:
            stats = uow.outbox.stats(self.clock())
        departments = set(self._departments())
        return all(s.pending == 0 for d, s in stats.items() if d in departments)

    def _departments(self) -> list[str]:
        return [*self.hub.configured_departments(), *sorted(PSEUDO_DEPARTMENTS)]

    # ----------------------------------------------------------------------- one turn

    def _turn(
        self, finished: list[Attempt], capacity: int
    ) -> list[tuple[OutboxItem, Case, WorkOrder | None]]:
        """Settle finished attempts and claim new rows, in one transaction."""
        started, cpu_started = perf_counter(), thread_time()
        with self.hub.uow() as uow:
            now = self.clock()
            # Limited departments' rows are locked first, in name order, before settle
            # touches department rows: all workers lock in one order and never deadlock.
            budgets = self._refill(uow, now)
            healths = uow.departments.all()  # read once: settle updates it, claim reads it
            notifications = self._settle(uow, finished, now, healths) if finished else []
            claimed = self._claim(uow, capacity, now, budgets, healths) if capacity > 0 else []
            uow.commit()
        loaded = self._load(claimed)
        self._observe_turn(perf_counter() - started, thread_time() - cpu_started)
        self.stats.claimed += len(loaded)
        for case, old, new in notifications:
            self._notify(case, old, new)
        return loaded

    def _load(self, claimed: list[OutboxItem]) -> list[tuple[OutboxItem, Case, WorkOrder | None]]:
        """The cases and work orders of the claimed rows, read after the claim's commit:
        on SQLite a read does not hold the one write lock the other writers wait for.
        The leases are ours by then; a case written meanwhile is read as it is now, and
        its later writes are guarded by its version as ever."""
        if not claimed:
            return []
        ids = [item.case_id for item in claimed]
        with self.hub.read_uow() as uow:
            cases = uow.cases.get_many(ids)
            orders = uow.work_orders.for_cases(ids)
        return [
            (item, cases[item.case_id], orders.get((item.case_id, item.department)))
            for item in claimed
            if item.case_id in cases
        ]

    def _observe_turn(self, seconds: float, cpu_seconds: float) -> None:
        self.turn_seconds += TURN_SMOOTHING * (seconds - self.turn_seconds)
        self.stats.turns += 1
        self.stats.turn_seconds += seconds
        self.stats.turn_cpu_seconds += cpu_seconds
        observe_turn(seconds)

    def burst_seconds(self) -> float:
        """How many seconds of a rate-limited department's calls its bucket holds."""
        return min(MAX_BURST_SECONDS, max(BURST_SECONDS, 2 * self.turn_seconds))

    def _refill(self, uow: UnitOfWork, now: datetime) -> dict[str, float]:
        """Tokens of each department with a cluster-wide limit (inf: no rate limit)."""
        budgets: dict[str, float] = {}
        for department in sorted(self._departments()):
            policy = self.hub.config.policy(department)
            rate = policy.rate_limit_per_second
            if rate is None and policy.max_in_flight is None:
                continue
            capacity = max(1.0, (rate or 0.0) * self.burst_seconds())
            tokens = uow.departments.refill_tokens(
                department, rate=rate, capacity=capacity, now=now.timestamp()
            )
            budgets[department] = tokens if rate is not None else float("inf")
        return budgets

    def _claim_limited(
        self, uow: UnitOfWork, department: str, want: int, tokens: float, now: datetime
    ) -> list[OutboxItem]:
        """Claim at most the tokens in the bucket and what the cluster-wide in-flight cap
        leaves; the department's row lock makes count-then-claim safe across workers."""
        policy = self.hub.config.policy(department)
        if tokens != float("inf"):  # whole tokens (epoch-second floats: ~1e-5 token noise)
            want = min(want, int(tokens + 1e-3))
        if policy.max_in_flight is not None and want > 0:
            want = min(want, policy.max_in_flight - uow.outbox.leased(department, now))
        if want <= 0:
            return []
        items = uow.outbox.claim(
            worker=self.worker_id, limit=want, lease=self.lease, now=now, only=[department]
        )
        if items and policy.rate_limit_per_second is not None:
            uow.departments.spend_tokens(department, len(items))
        return items

    def _claim(
        self,
        uow: UnitOfWork,
        capacity: int,
        now: datetime,
        budgets: dict[str, float] | None = None,
        healths: dict[str, DepartmentHealth] | None = None,
    ) -> list[OutboxItem]:
        budgets = budgets or {}
        healths = uow.departments.all() if healths is None else healths
        open_fully, canaries = [], []
        for department in self._departments():
            allowed = circuit_allows(healths.get(department, DepartmentHealth(department)), now)
            if allowed == "all":
                open_fully.append(department)
            elif allowed == "canary":
                canaries.append(department)
        items: list[OutboxItem] = []
        limit = min(self.batch_size, capacity)
        for department in (d for d in open_fully if d in budgets):  # first: never starved
            want = limit - len(items)
            items += self._claim_limited(uow, department, want, budgets[department], now)
        free = [d for d in open_fully if d not in budgets]
        if free and len(items) < limit:
            items += self._claim_shared(uow, free, limit - len(items), now)
        for department in canaries:
            until = now + timedelta(
                seconds=self.hub.config.policy(department).breaker_cooldown_seconds
            )
            if uow.departments.try_begin_canary(department, now=now, until=until):
                items += uow.outbox.claim(
                    worker=self.worker_id, limit=1, lease=self.lease, now=now, only=[department]
                )
        return items

    def _claim_shared(
        self, uow: UnitOfWork, departments: list[str], want: int, now: datetime
    ) -> list[OutboxItem]:
        """Claim up to `want` rows, one department per statement: each gets an equal share
        first, then what is left goes to those that had more due. So one department's
        backlog never holds up another's fresh cases (one claim ordered across all would
        serve the backlog's older rows first), and each claim is an ordered index range
        that stops at its LIMIT, whatever the planner knows of the table."""
        clock = perf_counter()
        asked = [d for d in departments if self._nothing_due_until.get(d, 0.0) <= clock]
        items = self._claim_fair_shares(uow, asked, want, now, clock) if asked else []
        if not items and len(asked) < len(departments):  # "nothing claimed" stays "nothing due"
            skipped = [d for d in departments if d not in asked]
            items = self._claim_fair_shares(uow, skipped, want, now, clock)
        return items

    def _claim_fair_shares(
        self, uow: UnitOfWork, departments: list[str], want: int, now: datetime, clock: float
    ) -> list[OutboxItem]:
        """Rounds of one equal share per department (one statement a round on PostgreSQL)
        until `want` rows are claimed or no department has more due."""
        self._rotation = (self._rotation + 1) % len(departments)
        hungry = departments[self._rotation :] + departments[: self._rotation]
        items: list[OutboxItem] = []
        while hungry and len(items) < want:
            asked = hungry[: want - len(items)]  # fewer rows left than departments
            share = (want - len(items)) // len(asked)
            got = uow.outbox.claim_each(
                worker=self.worker_id, departments=asked, limit=share, lease=self.lease, now=now
            )
            items += got
            counts = Counter(item.department for item in got)
            for department in asked:
                if not counts[department]:
                    self._nothing_due_until[department] = clock + self.idle_seconds
            hungry = [d for d in asked if counts[d] == share]
        return items

    # ----------------------------------------------------------------------- attempt

    async def _attempt(self, item: OutboxItem, case: Case, order: WorkOrder | None) -> Attempt:
        # Correlation ids for every log line of this attempt (adapter, httpx, zeep included).
        context = bind(
            case_id=item.case_id,
            delivery_id=item.id,
            department=item.department,
            operation=item.operation,
        )
        started = perf_counter()
        attempt: Attempt
        try:
            async with self._semaphore(item.department):
                attempt = await self._perform_any(item, case, order)
        except DeliveryError as error:
            attempt = self._classify(item, error)
        except DepartmentNotConfigured as error:
            attempt = Attempt(item, RETRY, str(error), error_class="not_configured", refused=True)
        except ConfigError as error:  # e.g. a secret's variable unset: a human must fix it
            message = f"department misconfigured: {'; '.join(error.problems)}"
            attempt = Attempt(item, PAUSED, message, error_class="config", refused=True)
        except Exception as error:  # an adapter bug must never crash the worker
            log.exception("adapter %s raised an unclassified error", item.department)
            attempt = self._classify(item, Transient(f"unclassified {type(error).__name__}"))
            attempt.error_class = "internal"
        elapsed = perf_counter() - started
        self._observe_call(elapsed)
        self.stats.slot_seconds += elapsed
        attempt.duration_ms = round(elapsed * 1000, 2)
        attempt.case = case
        self.stats.attempts[attempt.outcome] += 1
        observe_attempt(attempt)  # metrics + one log line
        unbind(context)
        return attempt

    async def _perform_any(self, item: OutboxItem, case: Case, order: WorkOrder | None) -> Attempt:
        handler = OPERATIONS.get(item.operation)
        if handler is None:
            return await self._perform(self.hub.adapter(item.department), item, case, order)
        message = await handler(self.hub, item, case, order)
        return Attempt(item, DONE, message, request_digest=digest(item.payload))

    def _semaphore(self, department: str) -> asyncio.Semaphore:
        if department not in self._semaphores:
            limit = self.hub.config.policy(department).max_concurrency or self.concurrency
            self._semaphores[department] = asyncio.Semaphore(limit)
        return self._semaphores[department]

    async def _perform(
        self, adapter: Adapter, item: OutboxItem, case: Case, order: WorkOrder | None
    ) -> Attempt:
        if item.operation == "create":
            return await self._create(adapter, item, case, order)
        external_id = order.external_id if order else None
        if not external_id:
            raise Permanent(
                f"{item.operation}: the department has no work order for this case",
                not_applied=True,
            )
        payload = item.payload
        if item.operation == "note":
            await adapter.add_note(external_id, OutboundNote.model_validate(payload))
        elif item.operation == "attach":
            await adapter.attach(external_id, Attachment.model_validate(payload))
        elif item.operation == "cancel":
            await adapter.cancel(external_id, payload.get("reason"))
        else:
            raise Permanent(f"unknown operation {item.operation!r}", not_applied=True)
        return Attempt(item, DONE, f"{item.operation} delivered", request_digest=digest(payload))

    async def _create(
        self, adapter: Adapter, item: OutboxItem, case: Case, order: WorkOrder | None
    ) -> Attempt:
        if order and order.external_id:  # delivered before (e.g. replayed by hand)
            return Attempt(item, DONE, f"already delivered as {order.external_id}")
        looked_up = False
        if item.maybe_applied and adapter.supports(Capability.FIND_BY_REFERENCE):
            looked_up = True
            found = await adapter.find_by_reference(case.hub_id)
            if found is not None:
                return Attempt(
                    item,
                    ADOPTED,
                    f"found existing work order {found.external_id} by reference;"
                    " adopted, not created again",
                    ref=found,
                    looked_up=True,
                )
        try:
            payload = self.hub.mapping(item.department).build_payload(case)
        except PayloadError as error:
            raise Permanent(f"mapping: {error}", not_applied=True) from error
        outbound = OutboundWorkOrder(
            hub_id=case.hub_id,
            department=item.department,
            work_order_type=case.work_order_type,
            priority=case.priority.value,
            payload=payload,
            evidence=case.evidence,
        )
        request_digest = digest(payload)
        try:
            ref = await adapter.create(outbound)
        except DeliveryError as error:
            error.request_digest = request_digest  # type: ignore[attr-defined]
            raise
        return Attempt(
            item,
            DELIVERED,
            f"work order {ref.external_id} created",
            ref=ref,
            request_digest=request_digest,
            looked_up=looked_up,
        )

    def _classify(self, item: OutboxItem, error: DeliveryError) -> Attempt:
        policy = self.hub.config.policy(item.department)
        adapter_can_look_up = self._can_look_up(item.department)
        request_digest = getattr(error, "request_digest", None)

        def made(outcome: str, message: str, **kw: Any) -> Attempt:
            return Attempt(
                item,
                outcome,
                message,
                error_class=error.error_class,
                request_digest=request_digest,
                refused=error.not_applied,
                **kw,
            )

        if isinstance(error, CapabilityNotSupported):
            return made(SKIPPED, f"not deliverable: {error.message}")
        if isinstance(error, AuthFailed):
            return made(PAUSED, f"authentication failed: {error.message}")
        if isinstance(error, Permanent):
            return made(DEAD, f"permanent failure: {error.message}")
        maybe_applied = isinstance(error, UnknownOutcome) or (
            isinstance(error, MalformedResponse) and item.operation == "create"
        )
        if maybe_applied and item.operation == "create" and not adapter_can_look_up:
            return made(
                DEAD,
                f"outcome unknown ({error.message}) and the department cannot be searched"
                " by reference: check by hand before replaying",
                department_failure=True,
            )
        if item.attempts >= policy.max_attempts:
            return made(
                DEAD,
                f"gave up after {item.attempts} attempts: {error.message}",
                department_failure=True,
            )
        retry_after = getattr(error, "retry_after", None)
        if maybe_applied and retry_after is None:
            retry_after = policy.unknown_outcome_delay_seconds
        return made(RETRY, error.message, retry_after=retry_after, department_failure=True)

    def _can_look_up(self, department: str) -> bool:
        try:
            return self.hub.adapter(department).supports(Capability.FIND_BY_REFERENCE)
        except Exception:
            return False

    # ----------------------------------------------------------------------- settle

    def _settle(
        self,
        uow: UnitOfWork,
        attempts: list[Attempt],
        now: datetime,
        healths: dict[str, DepartmentHealth] | None = None,
    ) -> list[tuple[Case, CaseStatus, CaseStatus]]:
        """Write the outcomes of a turn's attempts: set-wise where the outcome is the common
        one (success), row by row for the rest. Attempts whose lease moved to another
        worker are dropped: that worker's lookup will adopt whatever this one did.
        `healths` (the departments' rows as read this turn) is updated in place."""
        owned = self._settle_rows(uow, attempts, now)
        healths = uow.departments.all() if healths is None else healths
        before = {d: replace(h) for d, h in healths.items()}
        events: list[CaseEvent] = []
        deliveries: list[Attempt] = []
        for attempt in owned:
            department = attempt.item.department
            health = healths.setdefault(department, DepartmentHealth(department))
            events.append(self._attempt_event(attempt, now))
            events += self._apply_outcome(uow, attempt, health, now, deliveries)
        notifications = self._record_deliveries(uow, deliveries, now)
        uow.timeline.append(*events)
        for department in sorted({a.item.department for a in owned}):  # one lock order
            if healths[department] != before.get(department, DepartmentHealth(department)):
                uow.departments.put(healths[department])  # unchanged rows are not rewritten
        return notifications

    def _settle_rows(self, uow: UnitOfWork, attempts: list[Attempt], now: datetime):
        successes = [a for a in attempts if a.outcome in SUCCESSES]
        done = uow.outbox.mark_done_many([a.item.id for a in successes], worker=self.worker_id)
        owned = [a for a in successes if a.item.id in done]
        owned += [
            a for a in attempts if a.outcome not in SUCCESSES and self._settle_row(uow, a, now)
        ]
        self.stats.lost_leases += len(attempts) - len(owned)
        return owned

    def _settle_row(self, uow: UnitOfWork, attempt: Attempt, now: datetime) -> bool:
        outbox, item, worker = uow.outbox, attempt.item, self.worker_id
        if attempt.outcome in SUCCESSES:
            return outbox.mark_done(item.id, worker=worker)
        if attempt.outcome == DEAD:
            return outbox.mark_dead(
                item.id,
                error_class=attempt.error_class or "permanent",
                message=attempt.message,
                worker=worker,
                refused=attempt.refused,
            )
        if attempt.outcome == SKIPPED:
            return outbox.mark_skipped(item.id, reason=attempt.message, worker=worker)
        policy = self.hub.config.policy(item.department)
        if attempt.outcome == PAUSED:
            delay, refund = policy.breaker_cooldown_seconds, True
        else:
            delay = backoff_delay(
                item.attempts, policy, retry_after=attempt.retry_after, rng=self.rng
            )
            refund = attempt.error_class == "not_configured"
        return outbox.schedule_retry(
            item.id,
            at=now + timedelta(seconds=delay),
            error_class=attempt.error_class or "",
            message=attempt.message,
            worker=worker,
            refund_attempt=refund,
            refused=attempt.refused,
        )

    def _apply_outcome(self, uow, attempt: Attempt, health, now, deliveries) -> list[CaseEvent]:
        item = attempt.item
        policy = self.hub.config.policy(item.department)
        events: list[CaseEvent] = []
        if attempt.outcome in SUCCESSES:
            if record_success(health):
                events.append(self._event(item, "circuit_closed", "department answered again"))
            if item.operation == "create" and attempt.ref is not None:
                deliveries.append(attempt)
        elif attempt.outcome == DEAD and item.operation == "create":
            uow.work_orders.update(item.case_id, item.department, delivery_state=DeliveryState.DEAD)
        elif attempt.outcome == PAUSED:
            health.paused = True
            health.pause_reason = attempt.message
            events.append(
                self._event(
                    item,
                    "department_paused",
                    f"{item.department} paused: {attempt.message};"
                    f" resume with `hub departments resume {item.department}`",
                    EventLevel.ALERT,
                )
            )
        if attempt.department_failure and record_failure(health, policy, now):
            events.append(
                self._event(
                    item,
                    "circuit_opened",
                    f"{item.department} failing"
                    f" ({health.consecutive_failures} in a row); pausing for"
                    f" {policy.breaker_cooldown_seconds:g}s, then one canary",
                    EventLevel.ALERT,
                )
            )
        if attempt.outcome == DEAD:
            events.append(self._event(item, "dead_lettered", attempt.message, EventLevel.ALERT))
        return events

    def _record_deliveries(
        self, uow: UnitOfWork, deliveries: list[Attempt], now: datetime
    ) -> list[tuple[Case, CaseStatus, CaseStatus]]:
        """Delivered creates: the work orders get their external ids and the cases step
        from routed to in_queue, for the whole turn in a few statements."""
        uow.work_orders.mark_delivered_many(
            [
                {
                    "case_id": a.item.case_id,
                    "department": a.item.department,
                    "external_id": a.ref.external_id,
                    "raw_status": a.ref.raw_status,
                }
                for a in deliveries
                if a.ref is not None
            ],
            at=now,
        )
        steps = [
            (a.case, a.item.department, a.ref.raw_status if a.ref else None)
            for a in deliveries
            if a.case is not None
        ]
        changes = advance_many(uow, steps, CaseStatus.IN_QUEUE, source="hub", actor=self.worker_id)
        return [(c.case, c.old, c.new) for c in changes]

    def _attempt_event(self, attempt: Attempt, now: datetime) -> CaseEvent:
        item = attempt.item
        level = {RETRY: EventLevel.WARNING, DEAD: EventLevel.ALERT, PAUSED: EventLevel.ALERT}
        return CaseEvent(
            case_id=item.case_id,
            kind="delivery_attempt",
            at=now,
            actor=self.worker_id,
            department=item.department,
            level=level.get(attempt.outcome, EventLevel.INFO),
            message=attempt.message,
            detail={
                "operation": item.operation,
                "attempt": item.attempts,
                "outcome": attempt.outcome,
                "error_class": attempt.error_class,
                "duration_ms": attempt.duration_ms,
                "request_digest": attempt.request_digest,
                "looked_up": attempt.looked_up,
                "external_id": attempt.ref.external_id if attempt.ref else None,
                "retry_after": attempt.retry_after,
            },
        )

    def _event(
        self, item: OutboxItem, kind: str, message: str, level: EventLevel = EventLevel.INFO
    ) -> CaseEvent:
        return CaseEvent(
            case_id=item.case_id,
            kind=kind,
            actor=self.worker_id,
            department=item.department,
            level=level,
            message=message,
        )

    def _notify(self, case: Case, old: CaseStatus, new: CaseStatus) -> None:
        try:
            self.hub.pm.hook.hub_on_status_change(
                hub=self.hub, case=case, old=old, new=new, event=None
            )
        except Exception:
            log.exception("on_status_change hook failed for case %s", case.hub_id)


def resume_department(hub: Hub, department: str) -> None:
    """Lift a pause (after fixing credentials): the next worker turn delivers again."""
    with hub.uow() as uow:
        health = uow.departments.get(department)
        health.paused, health.pause_reason = False, None
        record_success(health)
        uow.departments.put(health)
        uow.commit()


__all__ = ["DeliveryPolicy", "DispatchStats", "Dispatcher", "resume_department"]
