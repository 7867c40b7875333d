"""Replay: a city's year in fast-forward, end to end, on SQLite or PostgreSQL.

N real-shaped cases (hub.testing.generator.CaseGenerator: service mix, places, times and
requesters drawn from the distributions of the real records in ../shared/realworld/) go
through intake, routing, dispatch to all three departments, two status events each from
the crews and the closure synced back. Two modes:

``--mode deployed`` (default): the hub as it is deployed. Each simulator runs in its own
process (``hub simulate``), ``hub worker`` processes (one on SQLite, ``--workers`` on
PostgreSQL) deliver and run the status polls from their scheduler (poll every second;
the poll overlap is shrunk to 2 s because fast-forward packs an hour of a real city into
a second, and all clocks here are one machine's), this process feeds intake while the
backlog stays under two chunks, and a crew thread moves every open work order one step
and then closes it, once a second. The clock stops when every case is closed.
Intake-to-delivery is measured from the outbox (created to completed); status lag is the
department's closure time to the hub receiving it (seconds resolution: the departments
stamp whole seconds).

On one 2-core machine the simulators, the feeder and PostgreSQL compete with the hub for
CPU, so deployed mode also accounts CPU (user+system) per role over the measured window,
read from /proc (Linux only) at its start and just before anything is stopped: the hub
(``hub worker`` processes; IntakeService in this process, by time.thread_time; on
PostgreSQL its server processes, split by pg_stat_activity: the sessions of the workers
and of the intake, each with its own application_name, and the background processes),
the test rig (each simulator process, the rest of this process's main thread: case
generation and the backlog/closed polls on an engine of their own, the crew thread) and
the whole machine (/proc/stat), with the gap between the roles' sum and the machine.
From it: hub CPU ms per case and the core-minutes 1,000,000 cases would need.

``--mode inprocess``: everything in this one process, chunk by chunk, phase after phase
(the cProfile of the whole code path):

intake (IntakeService.submit_many, routing included) -> dispatch to all three departments
(Dispatcher, in process) -> the crews (two status events per work order: one step, then
the closure, straight on the simulators) -> status sync (StatusSync.poll_all) -> closure.

Prints cases/s, p50/p99 intake-to-delivery and status lag (crew action to case closed,
per chunk), the time per phase and a cProfile summary. The cProfile covers the main
thread (intake, the event loop with the adapters' HTTP, the sync); the dispatcher's
database turns run in a thread pool and show up as the dispatch phase's wall time.

    .venv/bin/python benchmarks/replay.py --cases 20000
    .venv/bin/python benchmarks/replay.py --cases 20000 --postgres postgresql+psycopg://postgres@127.0.0.1/test
    .venv/bin/python benchmarks/replay.py --mode inprocess --cases 4000    # with the profile

``--profile-worker`` runs the (first) worker under cProfile and prints its top functions.

Prints a table, then the JSON document as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select, text  # noqa: E402

from benchmarks.dispatch import free_port, wait_until_answering  # noqa: E402
from benchmarks.proc_cpu import (  # noqa: E402
    all_processes,
    machine_cpu,
    other_processes,
    postgres_cpu,
    process_cpu,
    thread_cpu,
)
from hub.config import WorkerConfig  # noqa: E402
from hub.model import FINISHED  # noqa: E402
from hub.services.dispatch import Dispatcher  # noqa: E402
from hub.services.intake import IntakeService  # noqa: E402
from hub.services.runtime import Hub  # noqa: E402
from hub.services.sync import StatusSync  # noqa: E402
from hub.store import tables as t  # noqa: E402
from hub.store.db import make_engine  # noqa: E402
from hub.store.migrate import upgrade  # noqa: E402
from hub.testing.generator import CaseGenerator  # noqa: E402
from hub.testing.harness import (  # noqa: E402
    CE_PASSWORD_ENV,
    PASSWORD_ENV,
    SimulatedCity,
    simulated_city,
)
from hub.testing.simulators import codeenforcement as ce_sim  # noqa: E402
from hub.testing.simulators import publicworks as pw_sim  # noqa: E402
from hub.testing.soak import (  # noqa: E402
    DEPARTMENTS,
    postgres_schema,
    with_application_name,
    write_config,
)

TARGET_CASES, TARGET_SECONDS = 1_000_000, 1800
# The PostgreSQL processes whose CPU is the hub's: its sessions and the shared background.
HUB_POSTGRES_ROLES = ("worker_sessions", "feeder_sessions", "background")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Replay:
    def __init__(self, city: SimulatedCity, args: argparse.Namespace) -> None:
        self.city, self.args = city, args
        self.hub: Hub = city.hub()
        self.phases: dict[str, float] = defaultdict(float)
        self.to_delivery: list[float] = []
        self.status_lag: list[float] = []
        self.cases = self.closed = 0

    def run(self) -> None:
        generator = CaseGenerator(self.hub.mappings, seed=11).generate(self.args.cases)
        chunk: list = []
        for case in generator:
            chunk.append(case)
            if len(chunk) == self.args.chunk:
                self.one_chunk(chunk)
                chunk = []
        if chunk:
            self.one_chunk(chunk)

    def timed(self, phase: str, started: float) -> float:
        now = time.perf_counter()
        self.phases[phase] += now - started
        return now

    def one_chunk(self, chunk: list) -> None:
        started = time.perf_counter()
        results = IntakeService(self.hub).submit_many(chunk, actor="replay")
        ids = [r.case.hub_id for r in results if r.created]
        accepted_at = time.time()
        started = self.timed("intake", started)
        asyncio.run(self.dispatch())
        started = self.timed("dispatch", started)
        self.to_delivery += self.delivery_lags(ids, accepted_at)
        for department in DEPARTMENTS:
            simulator = self.city.simulator(department)
            simulator.advance(len(chunk))  # first status event
            simulator.advance(len(chunk), close=True)  # the closure
        crews_at = time.perf_counter()
        started = self.timed("crews (simulators)", started)
        asyncio.run(self.sync())
        self.timed("status sync", started)
        closed = self.count_closed(ids)
        self.status_lag += [time.perf_counter() - crews_at] * closed
        self.cases += len(ids)
        self.closed += closed

    async def dispatch(self) -> None:
        try:
            await Dispatcher(self.hub).run(until_empty=True, timeout=300)
        finally:
            await self.hub.aclose()

    async def sync(self) -> None:
        try:
            sync = StatusSync(self.hub, actor="replay")
            for _ in range(3):  # a file drop answers a moment later: poll until quiet
                results = await sync.poll_all()
                if not any(r.received for r in results.values()):
                    break
        finally:
            await self.hub.aclose()

    def delivery_lags(self, ids: list[str], accepted_at: float) -> list[float]:
        wo = t.work_orders.c
        with self.hub.engine.connect() as conn:
            rows = conn.execute(
                select(wo.updated_at).where(wo.case_id.in_(ids), wo.delivery_state == "delivered")
            ).scalars()
            return [max(0.0, at.timestamp() - accepted_at) for at in rows]

    def count_closed(self, ids: list[str]) -> int:
        done = [s.value for s in FINISHED]
        with self.hub.engine.connect() as conn:
            rows = conn.execute(
                select(t.cases.c.hub_id).where(
                    t.cases.c.hub_id.in_(ids), t.cases.c.status.in_(done)
                )
            ).all()
        return len(rows)


def profile_summary(profiler: cProfile.Profile, top: int) -> list[dict[str, Any]]:
    return profile_rows(pstats.Stats(profiler, stream=io.StringIO()), top)


def profile_rows(stats: pstats.Stats, top: int) -> list[dict[str, Any]]:
    rows = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}({name})"
        rows.append({"function": where, "calls": calls, "tottime": tottime, "cumtime": cumtime})
    rows.sort(key=lambda r: r["tottime"], reverse=True)
    return [
        {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows[:top]
    ]


def run_inprocess(args: argparse.Namespace, directory: Path, url: str) -> dict[str, Any]:
    worker = WorkerConfig(concurrency=256, batch_size=256, idle_poll_seconds=0.02)
    profiler = cProfile.Profile() if args.profile else None
    with simulated_city(
        directory, database_url=url, worker=worker, gis=False, payments=False
    ) as city:
        replay = Replay(city, args)
        started = time.perf_counter()
        with profiler or nullcontext():
            replay.run()
        seconds = time.perf_counter() - started
        replay.hub.dispose()
    rate = replay.cases / seconds
    return {
        "mode": "inprocess",
        "cases": replay.cases,
        "closed": replay.closed,
        "seconds": round(seconds, 1),
        "cases_per_s": round(rate, 1),
        "p50_intake_to_delivery_s": round(percentile(replay.to_delivery, 0.5), 3),
        "p99_intake_to_delivery_s": round(percentile(replay.to_delivery, 0.99), 3),
        "p50_status_lag_s": round(percentile(replay.status_lag, 0.5), 3),
        "p99_status_lag_s": round(percentile(replay.status_lag, 0.99), 3),
        "phases_s": {k: round(v, 1) for k, v in replay.phases.items()},
        "extrapolated_1m_minutes": round(TARGET_CASES / rate / 60, 1),
        "meets_target": TARGET_CASES / rate <= TARGET_SECONDS,
        "profile_top": profile_summary(profiler, args.top) if profiler else [],
    }


# --------------------------------------------------------------------------- CPU per role
# Linux only: /proc/PID/stat, /proc/self/task/TID/stat and /proc/stat.


@dataclass
class CpuSnapshot:
    """CPU seconds per role at one instant of the measured window."""

    wall: float
    workers: list[float | None]
    simulators: dict[str, float | None]
    process: float
    main_thread: float
    crews: float
    processes: dict[int, tuple[str, float, float]]
    postgres: dict[int, float]
    machine: tuple[float, float]

    @classmethod
    def take(
        cls, workers: list[subprocess.Popen], simulators: dict[str, int], crews_tid: int | None
    ) -> CpuSnapshot:
        processes = all_processes()
        return cls(
            wall=time.perf_counter(),
            workers=[process_cpu(w.pid) for w in workers],
            simulators={d: process_cpu(pid) for d, pid in simulators.items()},
            process=process_cpu(os.getpid()) or 0.0,
            main_thread=time.thread_time(),  # taken on the main thread
            crews=thread_cpu(crews_tid),
            processes=processes,
            postgres=postgres_cpu(processes),
            machine=machine_cpu(),
        )


def delta(end: float | None, start: float | None) -> float:
    """CPU used between two readings; 0 for a process gone before the end (counted as
    exited early) or not there at the start."""
    return 0.0 if end is None or start is None else end - start


def postgres_split(
    start: dict[int, float], end: dict[int, float], roles: dict[int, str]
) -> dict[str, float]:
    """The postgres processes' CPU in the window by role (`roles`: pid -> role from
    pg_stat_activity at the end). What no live pid holds (the postmaster, backends that
    exited inside the window, less the start figures of those that exited) is
    `postmaster_and_exited`."""
    split: dict[str, float] = defaultdict(float)
    for pid, seconds in end.items():
        split[roles.get(pid, "postmaster_and_exited")] += seconds - start.get(pid, 0.0)
    split["postmaster_and_exited"] -= sum(s for pid, s in start.items() if pid not in end)
    split["total"] = sum(end.values()) - sum(start.values())
    return dict(split)


def spread(lags: dict[str, list[float]], counted: str) -> dict[str, dict[str, Any]]:
    """Per department: how many, p50 and p99 seconds."""
    return {
        department: {
            counted: len(values),
            "p50_s": round(percentile(values, 0.5), 3),
            "p99_s": round(percentile(values, 0.99), 3),
        }
        for department, values in sorted(lags.items())
    }


def r3(value: float) -> float:
    return round(value, 3)


# --------------------------------------------------------------------------- deployed


@contextmanager
def department_process(department: str, directory: Path) -> Iterator[SimpleNamespace]:
    """`hub simulate <department>` in its own process; the file drop gets a directory."""
    port = free_port()
    command = [sys.executable, "-m", "hub.cli", "simulate", department, "--port", str(port)]
    root = None
    if department == "sanitation":
        root = directory / "sanitation-drop"
        root.mkdir(parents=True, exist_ok=True)
        command += ["--dir", str(root)]
    with (directory / f"{department}.log").open("wb") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url, proc)
        yield SimpleNamespace(url=url, simulator=SimpleNamespace(root=root), pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Crews(threading.Thread):
    """Once a second, at every department: every open work order one step, then closed
    (the two status events per case). Counts the status events the departments made."""

    def __init__(self, urls: dict[str, str], period: float = 1.0) -> None:
        super().__init__(daemon=True, name="crews")
        self.urls, self.period = urls, period
        self.events = 0
        self.retries = 0  # calls lost on the way (a keep-alive connection closed under it)
        self.failure: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client(timeout=120) as client:
                while not self.stopping.wait(self.period):
                    self.work(client)
        except BaseException as exc:  # the run must stop, not wait for closures never made
            self.failure = exc
            raise

    def work(self, client: httpx.Client) -> None:
        for url in self.urls.values():
            for close in (False, True):
                try:
                    answer = client.post(
                        f"{url}/__sim__/advance", json={"count": 10**9, "close": close}
                    )
                except httpx.TransportError:
                    # A connection the simulator closed as it was reused (its keep-alive
                    # ran out while another department's call took long): the open work
                    # orders are still open, and the next round works them.
                    self.retries += 1
                    continue
                answer.raise_for_status()
                self.events += len(answer.json()["changed"])


class Deployed:
    """Simulators and workers in their own processes; this process feeds intake."""

    def __init__(self, args: argparse.Namespace, directory: Path, url: str) -> None:
        self.args, self.directory, self.url = args, directory, url
        self.phases: dict[str, float] = defaultdict(float)
        self.intake_cpu = 0.0  # main-thread CPU inside IntakeService.submit_many
        self.known_pids: set[int] = set()  # this run's processes but PostgreSQL's
        # The rig's own polls (backlog, cases closed) on their own engine: read-only on
        # SQLite (no write lock), and a session of their own on PostgreSQL.
        self.rig = make_engine(self.tagged("rig"), pool_size=1, read_only=True)

    def tagged(self, role: str) -> str:
        """The URL with a PostgreSQL application_name per role, to split the server's CPU."""
        return with_application_name(self.url, self.application_name(role))

    @staticmethod
    def application_name(role: str) -> str:
        return f"replay-{role}-{os.getpid()}"

    def run(self) -> dict[str, Any]:
        os.environ.setdefault(PASSWORD_ENV, pw_sim.DEFAULT_PASSWORD)
        os.environ.setdefault(CE_PASSWORD_ENV, ce_sim.DEFAULT_PASSWORD)
        upgrade(self.url)
        with ExitStack() as stack:
            servers = {
                d: stack.enter_context(department_process(d, self.directory)) for d in DEPARTMENTS
            }
            city = SimulatedCity(
                self.directory, self.tagged("feeder"), servers=servers, timeout_seconds=30
            )
            config = write_config(
                city,
                self.directory / "hub.yaml",
                worker={"concurrency": 256, "batch_size": 256, "idle_poll_seconds": 0.05},
                poll_interval_seconds=1.0,
                poll_overlap_seconds=2.0,
            )
            hub = city.hub()
            workers = self.start_workers(config, stack)
            time.sleep(3.0)  # imports, migrations checked, first polls: outside the clock
            crews = Crews({d: s.url for d, s in servers.items()})
            crews.start()
            simulators = {d: s.pid for d, s in servers.items()}
            self.known_pids = {os.getpid(), *(w.pid for w in workers), *simulators.values()}
            first = CpuSnapshot.take(workers, simulators, crews.native_id)
            started = time.perf_counter()
            fed = self.feed(hub)
            closed = self.wait_closed(fed, crews)
            seconds = time.perf_counter() - started
            last = CpuSnapshot.take(workers, simulators, crews.native_id)  # before any stop
            roles = self.postgres_roles()
            exited = sum(w.poll() is not None for w in workers)
            crews.stopping.set()
            crews.join(timeout=30)
            self.stop_workers(workers)
            doc = self.figures(hub, fed, closed, seconds, crews.events)
            doc["crew_calls_retried"] = crews.retries
            doc.update(self.cpu_figures(first, last, roles, len(fed), exited))
            self.rig.dispose()
            hub.dispose()
        return doc

    # -- processes ------------------------------------------------------------------

    def worker_count(self) -> int:
        return self.args.workers if self.args.postgres else 1  # SQLite: one writer process

    def start_workers(self, config: Path, stack: ExitStack) -> list[subprocess.Popen]:
        env = {**os.environ, "HUB_DATABASE_URL": self.tagged("worker"), "HUB_LOG_LEVEL": "WARNING"}
        processes = []
        polls = self.args.poll_processes if self.args.scheduler_process else 0
        for slot in range(self.worker_count() + polls):
            command = [sys.executable]
            if self.args.profile_worker and slot == 0:
                command += ["-m", "cProfile", "-o", str(self.directory / "worker.prof")]
            command += ["-m", "hub.cli", "worker", "-c", str(config), "--worker-id", f"r{slot}"]
            if polls:  # the last processes run the polls, the others deliver
                command.append("--no-dispatch" if slot >= self.worker_count() else "--no-scheduler")
            log = stack.enter_context((self.directory / f"worker-{slot}.log").open("wb"))
            processes.append(
                subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
        return processes

    def stop_workers(self, processes: list[subprocess.Popen]) -> None:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)

    # -- feeding and waiting ---------------------------------------------------------

    def feed(self, hub: Hub) -> list[str]:
        """Submit chunk after chunk, holding the undelivered backlog under two chunks."""
        ids: list[str] = []
        chunk: list = []
        for case in CaseGenerator(hub.mappings, seed=11).generate(self.args.cases):
            chunk.append(case)
            if len(chunk) == self.args.chunk:
                ids += self.submit(hub, chunk)
                chunk = []
        if chunk:
            ids += self.submit(hub, chunk)
        return ids

    def submit(self, hub: Hub, chunk: list) -> list[str]:
        while self.backlog() > 2 * self.args.chunk:
            time.sleep(0.05)
        started, cpu = time.perf_counter(), time.thread_time()
        results = IntakeService(hub).submit_many(chunk, actor="replay")
        self.intake_cpu += time.thread_time() - cpu
        self.phases["intake (this process)"] += time.perf_counter() - started
        return [r.case.hub_id for r in results if r.created]

    def backlog(self) -> int:
        ob = t.outbox.c
        with self.rig.connect() as conn:
            return conn.execute(
                select(func.count()).where(ob.state == "pending", ob.operation == "create")
            ).scalar_one()

    def wait_closed(self, ids: list[str], crews: Crews) -> int:
        done = [s.value for s in FINISHED]
        deadline = time.perf_counter() + self.args.timeout
        closed = 0
        while time.perf_counter() < deadline:
            if crews.failure is not None:
                raise RuntimeError(f"the crews stopped: {crews.failure!r}")
            started = time.perf_counter()
            with self.rig.connect() as conn:
                closed = conn.execute(
                    select(func.count()).where(t.cases.c.status.in_(done))
                ).scalar_one()
            if closed >= len(ids):
                break
            # The count scans every case: at a million, a scan takes a fair part of a
            # second, so polls are spaced to keep the rig's share of the CPU under ~10%.
            time.sleep(max(0.25, 10 * (time.perf_counter() - started)))
        return closed

    # -- figures ---------------------------------------------------------------------

    def figures(
        self, hub: Hub, ids: list[str], closed: int, seconds: float, crew_events: int
    ) -> dict[str, Any]:
        ob, ie = t.outbox.c, t.inbound_events.c
        with hub.engine.connect() as conn:
            deliveries = conn.execute(
                select(ob.department, ob.created_at, ob.completed_at).where(
                    ob.operation == "create", ob.state == "done"
                )
            ).all()
            closures = conn.execute(
                select(ie.department, ie.occurred_at, ie.received_at).where(ie.outcome == "applied")
            ).all()
            events = conn.execute(select(func.count()).select_from(t.inbound_events)).scalar_one()
        by_department: dict[str, list[float]] = defaultdict(list)
        for department, made, done in deliveries:
            if done:
                by_department[department].append((done - made).total_seconds())
        to_delivery = [lag for lags in by_department.values() for lag in lags]
        lag_by_department: dict[str, list[float]] = defaultdict(list)
        for department, at, got in closures:
            lag_by_department[department].append(max(0.0, (got - at).total_seconds()))
        lag = [seconds for lags in lag_by_department.values() for seconds in lags]
        rate = len(ids) / seconds
        doc = {
            "mode": "deployed",
            "workers": self.worker_count(),
            "scheduler_process": self.args.scheduler_process,
            "poll_processes": self.args.poll_processes if self.args.scheduler_process else 0,
            "cases": len(ids),
            "closed": closed,
            "seconds": round(seconds, 1),
            "cases_per_s": round(rate, 1),
            "department_status_events": crew_events,
            "status_events_received": events,
            "p50_intake_to_delivery_s": round(percentile(to_delivery, 0.5), 3),
            "p99_intake_to_delivery_s": round(percentile(to_delivery, 0.99), 3),
            "intake_to_delivery_by_department": spread(by_department, "delivered"),
            "p50_status_lag_s": round(percentile(lag, 0.5), 3),
            "p99_status_lag_s": round(percentile(lag, 0.99), 3),
            "status_lag_by_department": spread(lag_by_department, "applied"),
            "phases_s": {k: round(v, 1) for k, v in self.phases.items()},
            "extrapolated_1m_minutes": round(TARGET_CASES / rate / 60, 1),
            "meets_target": TARGET_CASES / rate <= TARGET_SECONDS,
            "profile_top": self.worker_profile(),
        }
        return doc

    # -- CPU per role ----------------------------------------------------------------

    def postgres_roles(self) -> dict[int, str]:
        """pid -> role of every PostgreSQL server process pg_stat_activity lists now."""
        if not self.args.postgres:
            return {}
        ours = {self.application_name(r): f"{r}_sessions" for r in ("worker", "feeder", "rig")}
        query = text("SELECT pid, application_name, backend_type FROM pg_stat_activity")
        with self.rig.connect() as conn:
            rows = conn.execute(query).all()
        return {
            pid: ours.get(name) or ("background" if kind != "client backend" else "other_clients")
            for pid, name, kind in rows
        }

    def cpu_figures(
        self, first: CpuSnapshot, last: CpuSnapshot, roles: dict[int, str], cases: int, exited: int
    ) -> dict[str, Any]:
        workers = [delta(b, a) for a, b in zip(first.workers, last.workers, strict=True)]
        simulators = {d: delta(last.simulators[d], first.simulators[d]) for d in first.simulators}
        this_process = last.process - first.process
        main_thread = last.main_thread - first.main_thread
        crews = last.crews - first.crews
        postgres = postgres_split(first.postgres, last.postgres, roles)
        others_total, others = other_processes(first.processes, last.processes, self.known_pids)
        busy, total = (b - a for a, b in zip(first.machine, last.machine, strict=True))
        hub = sum(workers) + self.intake_cpu
        hub_postgres = None
        if self.args.postgres:  # background: WAL writer, checkpointer, autovacuum (shared)
            hub_postgres = sum(postgres.get(k, 0.0) for k in HUB_POSTGRES_ROLES)
        roles_sum = sum(workers) + sum(simulators.values()) + this_process + postgres["total"]
        per_case = (hub + (hub_postgres or 0.0)) / cases if cases else 0.0
        core_minutes = per_case * TARGET_CASES / 60
        cores = os.cpu_count() or 1
        return {
            "cpu_s": {
                "window_s": r3(last.wall - first.wall),
                "cores": cores,
                "hub_workers": r3(sum(workers)),
                "hub_workers_each": [r3(w) for w in workers],
                "hub_workers_exited_early": exited,
                "hub_intake": r3(self.intake_cpu),
                "hub_postgres": None if hub_postgres is None else r3(hub_postgres),
                "rig_simulators": {d: r3(v) for d, v in simulators.items()},
                "rig_feeder_main_thread": r3(main_thread - self.intake_cpu),
                "rig_crew_thread": r3(crews),
                "this_process": r3(this_process),
                "this_process_other_threads": r3(this_process - main_thread - crews),
                "postgres": {k: r3(v) for k, v in sorted(postgres.items())},
                "roles_sum": r3(roles_sum),
                "machine_busy": r3(busy),
                "machine_utilization": round(busy / total, 3) if total else 0.0,
                "gap": r3(busy - roles_sum),
                "gap_other_processes": r3(others_total),
                "gap_top_processes": {c: r3(v) for c, v in list(others.items())[:5] if v > 0},
            },
            "hub_cpu_ms_per_case": round(hub / cases * 1000, 2) if cases else 0.0,
            "hub_cpu_ms_per_case_with_postgres": (
                round(per_case * 1000, 2) if hub_postgres is not None else None
            ),
            "hub_core_minutes_1m": round(core_minutes, 1),
            "hub_minutes_1m_on_2_cores": round(core_minutes / 2, 1),
        }

    def worker_profile(self) -> list[dict[str, Any]]:
        path = self.directory / "worker.prof"
        if not path.exists():
            return []
        return profile_rows(pstats.Stats(str(path), stream=io.StringIO()), self.args.top)


def run_deployed(args: argparse.Namespace, directory: Path, url: str) -> dict[str, Any]:
    return Deployed(args, directory, url).run()


def cpu_table(doc: dict[str, Any]) -> list[str]:
    """The CPU per role (deployed mode): what is the hub, what is the test rig."""
    cpu = doc["cpu_s"]
    window, cores, pg = cpu["window_s"], cpu["cores"], cpu["postgres"]
    each = cpu["hub_workers_each"]
    busiest = max(each, default=0.0) / window if window else 0.0
    rows: list[tuple[str, float]] = [
        (
            f"hub  workers, {len(each)} process(es), busiest {busiest:.0%} of a core",
            cpu["hub_workers"],
        ),
        ("hub  intake: IntakeService.submit_many here", cpu["hub_intake"]),
    ]
    if cpu["hub_postgres"] is not None:
        rows += [
            ("hub  postgres: the workers' sessions", pg.get("worker_sessions", 0.0)),
            ("hub  postgres: the intake's sessions", pg.get("feeder_sessions", 0.0)),
            ("hub  postgres: background (WAL, checkpoint, vacuum)", pg.get("background", 0.0)),
        ]
    rows += [(f"rig  simulator {d}", v) for d, v in cpu["rig_simulators"].items()]
    rows += [
        ("rig  feeder: case generation, backlog/close polls", cpu["rig_feeder_main_thread"]),
        ("rig  crew thread", cpu["rig_crew_thread"]),
        ("rig  this process, other threads", cpu["this_process_other_threads"]),
    ]
    if cpu["hub_postgres"] is not None:
        rows += [
            ("rig  postgres: the rig's polling session", pg.get("rig_sessions", 0.0)),
            ("---  postgres: other clients (not this run)", pg.get("other_clients", 0.0)),
            ("---  postgres: postmaster + exited backends", pg.get("postmaster_and_exited", 0.0)),
        ]
    else:
        rows.append(("---  postgres, all processes (not this run)", pg["total"]))
    lines = [
        f"CPU (user+system s) in the measured window: {window:.1f} s wall x {cores} cores"
        f" = {window * cores:.1f} core-s",
        *(f"  {label:<58} {value:>8.2f}" for label, value in rows),
        f"  {'sum of the above':<58} {cpu['roles_sum']:>8.2f}",
        f"  {'machine busy (/proc/stat)':<58} {cpu['machine_busy']:>8.2f}"
        f"  ({cpu['machine_utilization']:.0%} of all cores)",
        f"  {'gap: machine - sum (other processes, kernel)':<58} {cpu['gap']:>8.2f}",
        f"    of which other processes {cpu['gap_other_processes']:.2f} (busiest by own CPU: "
        + (", ".join(f"{c} {v:.2f}" for c, v in cpu["gap_top_processes"].items()) or "none")
        + ")",
    ]
    if cpu["hub_workers_exited_early"]:
        lines.append(f"  ({cpu['hub_workers_exited_early']} worker(s) exited early: uncounted)")
    with_pg = doc["hub_cpu_ms_per_case_with_postgres"]
    store = (
        f"; {with_pg} ms with PostgreSQL's hub share"
        if with_pg is not None
        else " (SQLite runs inside these processes: included)"
    )
    lines += [
        f"hub CPU per case: {doc['hub_cpu_ms_per_case']} ms (workers + intake){store}",
        f"1,000,000 cases would need {doc['hub_core_minutes_1m']} core-minutes of hub CPU:"
        f" {doc['hub_minutes_1m_on_2_cores']} minutes on 2 cores with nothing else running"
        " (if the hub's work spread over both)",
    ]
    return lines


def table(doc: dict[str, Any]) -> str:
    lines = [
        f"store {doc['store']} ({doc['mode']}): {doc['cases']} cases ({doc['closed']} closed) in"
        f" {doc['seconds']} s = {doc['cases_per_s']} cases/s;"
        f" 1,000,000 would take {doc['extrapolated_1m_minutes']} min (target 30)",
        f"intake->delivery p50 {doc['p50_intake_to_delivery_s']} s, p99"
        f" {doc['p99_intake_to_delivery_s']} s; status lag p50 {doc['p50_status_lag_s']} s,"
        f" p99 {doc['p99_status_lag_s']} s",
    ]
    for department, lags in doc.get("status_lag_by_department", {}).items():
        lines.append(
            f"  status lag {department:<16} p50 {lags['p50_s']} s, p99 {lags['p99_s']} s"
            f" ({lags['applied']} applied)"
        )
    lines.append("phase                 seconds  share")
    total = sum(doc["phases_s"].values()) or 1
    for phase, secs in sorted(doc["phases_s"].items(), key=lambda kv: -kv[1]):
        lines.append(f"{phase:<20} {secs:>8.1f} {secs / total:>6.0%}")
    if doc["profile_top"]:
        where = "main thread" if doc["mode"] == "inprocess" else "first worker process"
        lines.append(f"cProfile ({where}), top by own time:")
        for row in doc["profile_top"]:
            lines.append(f"  {row['tottime']:>7.2f}s {row['calls']:>9} {row['function']}")
    if "cpu_s" in doc:
        lines += cpu_table(doc)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("deployed", "inprocess"), default="deployed")
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=2000, help="cases per pipeline round")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL instead of SQLite")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (PostgreSQL)")
    parser.add_argument("--profile-worker", action="store_true", help="cProfile the first worker")
    parser.add_argument(
        "--scheduler-process",
        action="store_true",
        help="status polls in a process of their own (hub worker --no-dispatch) beside the"
        " delivering workers (--no-scheduler): on SQLite, the second core",
    )
    parser.add_argument(
        "--poll-processes",
        type=int,
        default=1,
        metavar="N",
        help="with --scheduler-process: N such processes; each department's poll runs in"
        " whichever claims its slot, so the departments' polls spread over them",
    )
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json-out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hub-replay-") as tmp:
        directory = Path(tmp)
        run = run_inprocess if args.mode == "inprocess" else run_deployed
        if args.postgres:
            with postgres_schema(args.postgres, prefix="hubreplay") as url:
                doc = run(args, directory, url)
        else:
            doc = run(args, directory, f"sqlite:///{directory / 'hub.db'}")
    doc = {"benchmark": "replay", "store": "postgresql" if args.postgres else "sqlite", **doc}
    print(table(doc))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HUB_LOG_LEVEL", "WARNING")
    sys.exit(main())
