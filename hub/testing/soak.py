"""Chaos soak: many cases through real `hub worker` processes while everything goes wrong.

The soak process hosts the three department simulators (REST, SOAP, file drop), feeds
real-shaped cases through intake, plays the crews (two status events per work order) and
the departments' webhooks, and injects faults:

- simulator faults at `fault_rate` (timeouts after commit, 5xx, 429, malformed bodies,
  error envelopes), webhook loss and duplication;
- a worker killed with SIGKILL every `kill_every` seconds and restarted;
- the workers' PostgreSQL connections terminated (``pg_terminate_backend``);
- the sanitation contractor (the file drop) stopped and restarted.

At the end it proves: every case delivered exactly once or dead-lettered with a reason,
every department closure reached its case, a reconcile run finds nothing, and no
requester name, email or phone number appears in the captured logs.

The worker management, request log and PostgreSQL schema helpers are shared with the
benchmarks (benchmarks/scaleout.py, benchmarks/backlog.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from hub.config import load_config
from hub.model import FINISHED, Case
from hub.services.intake import IntakeService
from hub.services.reconcile import Reconciler
from hub.services.runtime import Hub
from hub.services.sync import StatusSync
from hub.services.webhooks import WebhookService, signature_header
from hub.store import tables as t
from hub.testing.generator import CaseGenerator
from hub.testing.harness import PASSWORD_ENV, SimulatedCity, simulated_city
from hub.testing.simulators import codeenforcement as ce_sim
from hub.testing.simulators import publicworks as pw_sim
from hub.testing.simulators import sanitation as san_sim
from hub.testing.simulators.base import FaultProfile

DEPARTMENTS = ("publicworks", "codeenforcement", "sanitation")
WEBHOOK_SECRET_ENV = "HUB_SOAK_WEBHOOK_SECRET"
# Where each simulator keeps the hub reference, and when a record is finished.
REFERENCE = {
    "publicworks": "OtherSystemId",
    "codeenforcement": "ExternalReference",
    "sanitation": "CaseRef",
}


def fault_profile(rate: float, *, seed: int, hang_seconds: float) -> FaultProfile:
    """`rate` of department calls fail, spread over the kinds a real department shows."""
    share = {
        "timeout_after_commit": 0.25,
        "error_5xx": 0.25,
        "rate_limit_429": 0.2,
        "malformed": 0.2,
        "error_envelope": 0.1,
    }
    return FaultProfile(
        **{k: rate * v for k, v in share.items()},
        retry_after_seconds=1.0,
        hang_seconds=hang_seconds,
        seed=seed,
    )


def finished_record(department: str, record: dict[str, Any]) -> bool:
    if department == "publicworks":
        return record["Status"] in pw_sim.FINAL_STATUSES
    if department == "codeenforcement":
        return record["StatusType"] in ce_sim.FINAL_TYPES
    return record["Status"] in san_sim.FINAL


# --------------------------------------------------------------------------- PostgreSQL


@contextmanager
def postgres_schema(base_url: str, prefix: str = "hubsoak") -> Iterator[str]:
    """A fresh schema in `base_url`'s database (dropped afterwards); yields its URL."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def with_application_name(url: str, name: str) -> str:
    """Tag the workers' PostgreSQL sessions so the soak can find (and terminate) them."""
    if make_url(url).get_backend_name() != "postgresql":
        return url
    tagged = make_url(url).update_query_dict({"application_name": name})
    return tagged.render_as_string(hide_password=False)


def terminate_backends(url: str, application_name: str) -> int:
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            return conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": application_name},
            ).scalar_one()
    finally:
        admin.dispose()


# --------------------------------------------------------------------------- workers


def write_config(
    city: SimulatedCity, path: Path, *, worker: dict[str, Any] | None = None, **department: Any
) -> Path:
    """`city`'s config for `hub worker -c`, with worker settings and per-department extras
    (e.g. ``delivery={"rate_limit_per_second": 20}``) merged in."""
    config = city.config_dict()
    config["worker"].update(worker or {})
    for name, dept in config["departments"].items():
        for key, value in department.items():
            if isinstance(value, dict) and isinstance(dept.get(key), dict):
                dept[key].update(value)
            elif value is not None:
                dept[key] = value
        if name == "publicworks" and os.environ.get(WEBHOOK_SECRET_ENV):
            dept["webhook_secret"] = {"env": WEBHOOK_SECRET_ENV}
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class WorkerPool:
    """`hub worker` subprocesses; output appended to one log file per worker slot."""

    config: Path
    database_url: str
    logs: Path
    scheduler: bool = True
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)
    generation: Counter = field(default_factory=Counter)
    kills: int = 0
    crashes: int = 0

    def start(self, slot: int) -> subprocess.Popen:
        self.generation[slot] += 1
        name = f"w{slot}.{self.generation[slot]}"
        env = {**os.environ, "HUB_DATABASE_URL": self.database_url}
        env.setdefault(PASSWORD_ENV, pw_sim.DEFAULT_PASSWORD)
        command = [sys.executable, "-m", "hub.cli", "worker", "-c", str(self.config)]
        command += ["--worker-id", name] + ([] if self.scheduler else ["--no-scheduler"])
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"worker-{slot}.log").open("ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes[slot] = process
        return process

    def start_all(self, count: int) -> None:
        for slot in range(count):
            self.start(slot)

    def kill(self, slot: int) -> None:
        """SIGKILL (no goodbye: in-flight calls and leases are abandoned), then restart."""
        process = self.processes[slot]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        self.kills += 1
        self.start(slot)

    def revive(self) -> None:
        """A worker that died on its own is a bug: count it, restart it."""
        for slot, process in list(self.processes.items()):
            if process.poll() is not None:
                self.crashes += 1
                self.start(slot)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class RequestLog:
    """ASGI wrapper counting a simulator's create calls: arrival times and the most in
    flight at once, as the department sees them (rate-limit tests and benchmarks)."""

    def __init__(self, app: Any, suffixes: tuple[str, ...] = ("/Create",)) -> None:
        self.app, self.suffixes = app, suffixes
        self.stamps: list[float] = []
        self.in_flight = self.peak = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith(self.suffixes):
            await self.app(scope, receive, send)
            return
        self.stamps.append(time.monotonic())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def steady_rate(stamps: list[float], skip_seconds: float = 0.5) -> float:
    """Requests per second after the first `skip_seconds` (the bucket's initial burst)."""
    if len(stamps) < 3:
        return 0.0
    start = stamps[0] + skip_seconds
    steady = [s for s in stamps if s >= start]
    if len(steady) < 2:
        return 0.0
    return (len(steady) - 1) / (steady[-1] - steady[0])


# --------------------------------------------------------------------------- the soak


@dataclass
class SoakOptions:
    cases: int = 10_000
    seconds: float | None = None  # bound on the chaos phase (then a drain grace period)
    postgres: str | None = None
    workers: int = 2
    fault_rate: float = 0.2
    kill_every: float = 20.0
    db_drop_every: float = 25.0
    sftp_restart_every: float = 30.0
    webhook_loss: float = 0.1
    webhook_duplication: float = 0.1
    drain_seconds: float = 180.0
    feed_seconds: float | None = None  # spread intake over this long (default: at once)
    seed: int = 7
    directory: Path | None = None
    # As an on-prem Cityworks stores them: a crew's two steps often share one second.
    publicworks_timestamps: str = "seconds"


@dataclass
class SoakReport:
    cases: int = 0
    delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    dead_letters: int = 0
    dead_without_reason: int = 0
    closures: int = 0
    closures_missing: int = 0
    missing_by_department: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    kills_survived: int = 0
    worker_crashes: int = 0
    reconcile: dict[str, int] = field(default_factory=dict)
    reconcile_sample: list[dict[str, Any]] = field(default_factory=list)
    pii_hits: int = 0
    pii_where: list[str] = field(default_factory=list)
    pii_values_checked: int = 0
    logs_scanned: int = 0
    store: str = "sqlite"
    seconds: float = 0.0
    drained: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.drained
            and self.duplicates == self.lost == self.dead_without_reason == 0
            and self.closures_missing == self.worker_crashes == self.pii_hits == 0
            and not any(self.reconcile.values())
            and self.delivered + self.dead_letters == self.cases
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}

    def table(self) -> str:
        rows = [
            ("store", self.store),
            ("cases", self.cases),
            ("delivered (exactly once)", self.delivered),
            ("duplicates", self.duplicates),
            ("lost", self.lost),
            ("dead letters (with reason)", self.dead_letters),
            (
                "closures reached the case",
                f"{self.closures - self.closures_missing}/{self.closures}",
            ),
            *((f"fault: {k}", v) for k, v in sorted(self.faults.items())),
            ("kills survived (SIGKILL)", self.kills_survived),
            ("worker crashes", self.worker_crashes),
            ("reconcile findings", sum(self.reconcile.values())),
            (
                "PII hits in logs",
                f"{self.pii_hits} ({self.pii_values_checked} values, {self.logs_scanned} files)",
            ),
            ("seconds", f"{self.seconds:.1f}"),
            ("verdict", "PASS" if self.ok else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


class Soak:
    def __init__(self, options: SoakOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.faults: Counter[str] = Counter()
        self.stop = threading.Event()
        self.hub_ids: list[str] = []
        self.pii: set[str] = set()

    def run(self) -> SoakReport:
        started = time.monotonic()
        os.environ.setdefault(WEBHOOK_SECRET_ENV, "soak-" + uuid.uuid4().hex)
        directory = self.options.directory or Path(f"/tmp/hub-soak-{uuid.uuid4().hex[:8]}")
        if self.options.postgres:
            with postgres_schema(self.options.postgres) as url:
                report = self._run(directory, url)
        else:
            report = self._run(directory, f"sqlite:///{directory / 'hub.db'}")
        report.seconds = time.monotonic() - started
        return report

    def _run(self, directory: Path, url: str) -> SoakReport:
        options = self.options
        profile = fault_profile(options.fault_rate, seed=options.seed, hang_seconds=1.5)
        with simulated_city(
            directory,
            database_url=url,
            faults=profile,
            timeout_seconds=1.0,
            gis=False,
            payments=False,
        ) as city:
            city.set_faults(
                "sanitation", {**profile.model_dump(), "late_files": 0.05, "duplicate_files": 0.05}
            )
            publicworks = city.simulator("publicworks")
            publicworks.timestamp_resolution = options.publicworks_timestamps  # type: ignore[attr-defined]
            app_name = f"hubsoak-{uuid.uuid4().hex[:8]}"
            config = write_config(
                city,
                directory / "hub.yaml",
                worker={"lease_seconds": 5, "concurrency": 64, "batch_size": 32},
                poll_interval_seconds=2.0,
                poll_overlap_seconds=30.0,
            )
            hub = Hub(load_config(config), database=url)  # webhook secret included
            pool = WorkerPool(config, with_application_name(url, app_name), directory / "logs")
            workers = options.workers if options.postgres else 1  # SQLite: one writer
            pool.start_all(workers)
            try:
                drained = self._chaos(city, hub, pool, url, app_name)
            finally:
                pool.stop()
            report = self._verify(city, hub, drained)
            report.kills_survived, report.worker_crashes = pool.kills, pool.crashes
            report.store = "postgresql" if options.postgres else "sqlite"
            report.pii_values_checked = len(self.pii)
            report.logs_scanned, report.pii_where = grep_logs(directory / "logs", self.pii)
            report.pii_hits = len(report.pii_where)
            hub.dispose()
        return report

    # -- the chaos phase -------------------------------------------------------------

    def _chaos(self, city: SimulatedCity, hub: Hub, pool: WorkerPool, url: str, app: str) -> bool:
        options = self.options
        feeder = threading.Thread(target=self._feed, args=(hub,), daemon=True, name="intake")
        crews = threading.Thread(target=self._crews, args=(city, hub), daemon=True, name="crews")
        feeder.start()
        crews.start()
        begun = time.monotonic()
        deadline = begun + (options.seconds or 3600)
        next_kill = begun + options.kill_every
        next_drop = begun + options.db_drop_every / 2
        next_sftp = begun + options.sftp_restart_every / 2
        while time.monotonic() < deadline and not self._finished(city, hub, feeder):
            now = time.monotonic()
            if now >= next_kill:
                pool.kill(self.rng.randrange(len(pool.processes)))
                next_kill = now + options.kill_every
            if options.postgres and now >= next_drop:
                self.faults["db_connections_terminated"] += terminate_backends(url, app)
                self.faults["db_drops"] += 1
                next_drop = now + options.db_drop_every
            if now >= next_sftp:
                self._restart_drop(city)
                next_sftp = now + options.sftp_restart_every
            pool.revive()
            time.sleep(0.5)
        # Calm down: no new faults; the queue drains and the crews finish.
        for department in DEPARTMENTS:
            self._count_faults(city, department)
            city.set_faults(department, "none")
        grace = time.monotonic() + options.drain_seconds
        while time.monotonic() < grace and not self._finished(city, hub, feeder):
            pool.revive()
            time.sleep(0.5)
        self.stop.set()
        crews.join(timeout=30)
        feeder.join(timeout=30)
        return self._finished(city, hub, feeder)

    def _feed(self, hub: Hub) -> None:
        """Intake in batches of 50, spread over `feed_seconds` (a busy 311 centre)."""
        generator = CaseGenerator(hub.mappings, seed=self.options.seed).generate(self.options.cases)
        intake = IntakeService(hub)
        spread = self.options.feed_seconds or 0.0
        pause = max(0.02, spread / max(1, self.options.cases / 50))
        batch: list[Case] = []
        for case in generator:
            batch.append(case)
            if len(batch) == 50:
                self._submit(intake, batch)
                batch = []
                time.sleep(pause)
            if self.stop.is_set():
                return
        if batch:
            self._submit(intake, batch)

    def _submit(self, intake: IntakeService, batch: list[Case]) -> None:
        for case in batch:
            if case.requester is not None:
                self.pii.update(pii_values(case.requester.model_dump()))
        results = intake.submit_many(batch, actor="soak")
        self.hub_ids += [r.case.hub_id for r in results if r.created]

    def _crews(self, city: SimulatedCity, hub: Hub) -> None:
        """Every second the crews work what is open: one step, then the closure (two
        status events each). Public works also pushes them as webhooks, some lost, some
        twice; the workers' polls bring in the rest."""
        webhooks = WebhookService(hub)
        while not self.stop.wait(1.0):
            for department in DEPARTMENTS:
                simulator = city.simulator(department)
                try:
                    events = simulator.advance(10_000) + simulator.advance(10_000, close=True)
                except Exception:  # a file drop mid-restart: the next tick catches up
                    continue
                if department == "publicworks" and events:
                    self._push(webhooks, events)

    def _push(self, webhooks: WebhookService, events: list[dict[str, Any]]) -> None:
        generic = []
        zone = webhooks.hub.mapping("publicworks").local_timezone
        for event in events:
            roll = self.rng.random()
            if roll < self.options.webhook_loss:
                self.faults["webhook_lost"] += 1
                continue
            copies = 2 if roll > 1 - self.options.webhook_duplication else 1
            self.faults["webhook_duplicated"] += copies - 1
            generic += [publicworks_webhook_event(event, zone)] * copies
        for start in range(0, len(generic), 200):
            body = json.dumps({"events": generic[start : start + 200]}).encode()
            signature = signature_header(os.environ[WEBHOOK_SECRET_ENV], body)
            try:
                asyncio.run(webhooks.receive("publicworks", body, signature))
            except Exception:  # a webhook the hub failed to take is a lost webhook
                self.faults["webhook_refused"] += 1

    def _restart_drop(self, city: SimulatedCity) -> None:
        """The contractor's file server goes away for a second and comes back."""
        contractor = city.simulator("sanitation")
        contractor.stop()  # type: ignore[attr-defined]
        time.sleep(1.0)
        contractor.start_background()  # type: ignore[attr-defined]
        self.faults["sftp_restarts"] += 1

    def _count_faults(self, city: SimulatedCity, department: str) -> None:
        for kind, count in city.simulator(department).faults.counters.items():
            self.faults[kind] += count

    def _finished(self, city: SimulatedCity, hub: Hub, feeder: threading.Thread) -> bool:
        if feeder.is_alive():
            return False
        with hub.engine.connect() as conn:
            pending = conn.execute(
                select(func.count()).where(t.outbox.c.state.in_(["pending", "held"]))
            ).scalar_one()
        if pending:  # the closures check reads every simulator's records: only at the end
            return False
        _, missing, still_open = self._closures(city, hub)
        return still_open == 0 and not missing

    # -- the proof -------------------------------------------------------------------

    def _closures(self, city: SimulatedCity, hub: Hub) -> tuple[int, list[str], int]:
        """Department records finished, those whose case has not heard, and open ones."""
        finished: list[str] = []
        still_open = 0
        self.department_of: dict[str, str] = {}
        for department in DEPARTMENTS:
            records = city.simulator(department).snapshot()["records"]
            self.department_of.update({r[REFERENCE[department]]: department for r in records})
            still_open += sum(1 for r in records if not finished_record(department, r))
            finished += [
                r[REFERENCE[department]] for r in records if finished_record(department, r)
            ]
        with hub.engine.connect() as conn:
            statuses = (
                dict(
                    conn.execute(
                        select(t.cases.c.hub_id, t.cases.c.status).where(
                            t.cases.c.hub_id.in_(finished)
                        )
                    ).all()
                )
                if finished
                else {}
            )
        done = {s.value for s in FINISHED}
        return len(finished), [h for h in finished if statuses.get(h) not in done], still_open

    def _verify(self, city: SimulatedCity, hub: Hub, drained: bool) -> SoakReport:
        report = SoakReport(cases=len(self.hub_ids), drained=drained)
        report.faults = dict(self.faults)
        asyncio.run(self._final_sync(hub))
        records = {d: city.simulator(d).snapshot()["records"] for d in DEPARTMENTS}
        by_reference: Counter[tuple[str, str]] = Counter(
            (d, r[REFERENCE[d]]) for d, rs in records.items() for r in rs
        )
        report.duplicates = sum(n - 1 for n in by_reference.values() if n > 1)
        with hub.engine.connect() as conn:
            orders = conn.execute(
                select(
                    t.work_orders.c.case_id,
                    t.work_orders.c.department,
                    t.work_orders.c.delivery_state,
                )
            ).all()
            dead = dict(
                conn.execute(
                    select(t.outbox.c.case_id, t.outbox.c.last_error_message).where(
                        t.outbox.c.state == "dead", t.outbox.c.operation == "create"
                    )
                ).all()
            )
        for case_id, department, state in orders:
            present = by_reference[(department, case_id)] > 0
            if state == "delivered" and present:
                report.delivered += 1
            elif state == "dead" and not present:
                report.dead_letters += 1
                report.dead_without_reason += 0 if dead.get(case_id) else 1
            else:
                report.lost += 1
        report.lost += len(self.hub_ids) - len({o.case_id for o in orders})
        report.closures, missing, _ = self._closures(city, hub)
        report.closures_missing = len(missing)
        report.missing_by_department = dict(Counter(self.department_of[h] for h in missing))
        report.reconcile, report.reconcile_sample = asyncio.run(self._reconcile(hub))
        report.reconcile_sample = [
            explain_finding(hub, records, f) for f in report.reconcile_sample
        ]
        return report

    async def _final_sync(self, hub: Hub) -> None:
        try:
            await StatusSync(hub, actor="soak").poll_all()
        finally:
            await hub.aclose()

    async def _reconcile(self, hub: Hub) -> tuple[dict[str, int], list[dict[str, Any]]]:
        try:
            report = await Reconciler(hub).run()
            departments = report.as_dict()["departments"].values()
            sample = [f for d in departments for f in d["findings"][:3]]
            return report.counts, sample
        finally:
            await hub.aclose()


# --------------------------------------------------------------------------- diagnosis


def explain_finding(
    hub: Hub, records: dict[str, list[dict[str, Any]]], finding: dict[str, Any]
) -> dict[str, Any]:
    """A reconcile finding with what it takes to see its cause: the hub's work order (raw
    status, its sequence, when written), the case, the department's record (status, its
    modification time, its own history), the inbound events and the case's status
    timeline, in order."""
    case_id, department = finding.get("case_id"), finding.get("department")
    if not case_id or department not in REFERENCE:
        return finding
    w, c, e, i = t.work_orders.c, t.cases.c, t.case_events.c, t.inbound_events.c
    with hub.engine.connect() as conn:
        order = conn.execute(
            select(
                w.external_id,
                w.raw_status,
                w.mapped_status,
                w.last_sequence,
                w.delivery_state,
                w.updated_at,
            ).where(w.case_id == case_id, w.department == department)
        ).first()
        case = conn.execute(
            select(c.status, c.version, c.updated_at).where(c.hub_id == case_id)
        ).first()
        timeline = conn.execute(
            select(e.at, e.kind, e.source, e.actor, e.message)
            .where(e.case_id == case_id, e.kind.like("status%") | (e.kind == "delivery_attempt"))
            .order_by(e.id)
        ).all()
        inbound = conn.execute(
            # payload: only its source (poll, push, reconcile) is kept below
            select(i.id, i.external_event_id, i.sequence, i.outcome, i.received_at, i.payload)
            .where(i.department == department, i.case_id == case_id)
            .order_by(i.id)
        ).all()
    record = next(
        (r for r in records.get(department, []) if r.get(REFERENCE[department]) == case_id), {}
    )
    return {
        **finding,
        "hub_work_order": _plain(order._asdict()) if order else None,
        "hub_case": _plain(case._asdict()) if case else None,
        "department_record": {
            k: record.get(k)
            for k in (
                "RequestId",
                "CaseId",
                "Status",
                "StatusType",
                "DateTimeModified",
                "StatusDate",
                "events",
            )
            if k in record
        },
        "inbound_events": [
            _plain({**r._asdict(), "payload": (r.payload or {}).get("source")}) for r in inbound
        ],
        "timeline": [_plain(r._asdict()) for r in timeline],
    }


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


# --------------------------------------------------------------------------- PII


def pii_values(requester: dict[str, Any]) -> set[str]:
    """The requester's identifying strings worth searching for (long enough to mean it)."""
    keys = ("first_name", "last_name", "name", "email", "phone")
    return {str(v) for k, v in requester.items() if k in keys and v and len(str(v)) >= 5}


def grep_logs(directory: Path, values: set[str]) -> tuple[int, list[str]]:
    """(files scanned, hits as file:line): every log line searched for every value. The
    hits name where, never the value itself (the report must not leak it either)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    hits: list[str] = []
    for path in files:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            hits += [f"{path.name}:{number}" for value in values if value in line]
    return len(files), hits


def publicworks_webhook_event(event: dict[str, Any], zone: ZoneInfo) -> dict[str, Any]:
    """A simulator status change in the hub's generic webhook shape, with the event id and
    sequence the poll would give it (so a poll after a push is deduplicated). The stamp
    is the department's wall time in `zone`."""
    stamp = event["DateModified"]
    occurred = datetime.fromisoformat(stamp)
    occurred = occurred if occurred.tzinfo else occurred.replace(tzinfo=zone)
    sequence = occurred.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "event_id": f"{event['RequestId']}:{event['NewValue']}:{sequence}",
        "work_order_id": str(event["RequestId"]),
        "hub_reference": event["OtherSystemId"],
        "status": event["NewValue"],
        "occurred_at": stamp,
        "sequence": sequence,
    }


def run_soak(options: SoakOptions) -> SoakReport:
    return Soak(options).run()
