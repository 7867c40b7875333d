"""Dispatch throughput: the hub end to end against the fastest plain client loops.

For every cell of (simulator latency 0 / 50 ms) x (concurrency 1 / 32 / 256), against one
public-works simulator running in its own process on loopback, with the same
ServiceRequest/Create form bodies for every client:

- ``aiohttp``: a bare asyncio loop, one ClientSession, C worker tasks;
- ``httpx``: the same loop with ``httpx.AsyncClient`` and its own connection pool;
- ``httpx+aiohttp``: the same loop with the hub's client (``make_async_client``:
  httpx API over ``HubAiohttpTransport``);
- ``adapter``: the same loop calling the hub's public-works adapter ``create`` (mapping,
  digest, Cityworks client, ``make_async_client``) with no store: the hub's HTTP path alone;
- ``hub``: cases written by intake, then claimed, delivered, acknowledged and recorded by
  the Dispatcher until the outbox is empty.

The figure that counts is hub / aiohttp (target >= 0.6). Every client checks that each
answer is an HTTP 200 envelope with Status 0; the hub run is checked for duplicates in the
department (``/__sim__/state``) and for every case delivered.

    .venv/bin/python benchmarks/dispatch.py                  # full matrix, ~3-5 minutes
    .venv/bin/python benchmarks/dispatch.py --quick          # smoke run
    .venv/bin/python benchmarks/dispatch.py --repeats 3      # medians of 3 runs per cell
    .venv/bin/python benchmarks/dispatch.py --postgres postgresql+psycopg://postgres@127.0.0.1/test

With ``--repeats N`` each cell runs N times, each time with every client and a fresh hub
store. A cell then reports the median of each rate and the median of the N per-run ratios
(each run's hub against that run's aiohttp loop), with every run's ratio beside it. The
rates of this 2-core machine class swing by a quarter between runs of one afternoon, the
bare loop's as much as the hub's. The hub's process CPU per case (``hub cpu ms``: every
thread of the hub's process while the Dispatcher runs; the simulator is another process)
does not wait on the simulator as the rates do, though it still follows the machine's
speed: compare two versions of the hub by it, in runs that alternate
(``benchmarks/compare.py`` does that).

Two more columns say what held the hub back (from the Dispatcher's own stats):
``slots`` is the mean share of its call slots in use (near 1: the department set the
pace; well below: the hub's own turns and event loop did) and ``turn ms`` the wall time of
its database turns per case. Turns run one at a time in a thread beside the event loop,
so where ``turn ms`` approaches 1000 / hub/s the turns are the bottleneck; JSON
``hub_turn_cpu_ms_per_case`` is the turn thread's CPU in them (the rest of a turn waits
for the disk, locks and the GIL).

Prints a table, then the JSON document as the last line (``--json-out FILE`` saves it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    Store,
    dispatch_all,
    free_port,  # noqa: F401  (replay.py and scaleout.py import it from here)
    routed_cases,
    sim_admin,
    sim_state,
    simulator_process,
    wait_until_answering,  # noqa: F401  (as free_port)
)
from benchmarks._common import hub_config as department_hub_config  # noqa: E402
from hub.adapters import OutboundWorkOrder  # noqa: E402
from hub.config import HubConfig  # noqa: E402
from hub.mapping import MappingSet, load_mappings  # noqa: E402
from hub.model import Case  # noqa: E402
from hub.services.dispatch import digest  # noqa: E402
from hub.services.intake import IntakeService  # noqa: E402
from hub.services.runtime import Hub  # noqa: E402
from hub.store.db import SQLITE_SYNCHRONOUS_ENV  # noqa: E402
from hub.testing.harness import PASSWORD_ENV, REPO_MAPPINGS  # noqa: E402
from hub.testing.simulators.publicworks import DEFAULT_LOGIN, DEFAULT_PASSWORD  # noqa: E402
from hub.transports.http import make_async_client  # noqa: E402

DEPARTMENT = "publicworks"
CREATE_PATH = "/Services/Ams/ServiceRequest/Create"
AUTH_PATH = "/Services/General/Authentication/Authenticate"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CLIENT_TIMEOUT = 60.0
TARGET_RATIO = 0.6

# --------------------------------------------------------------------------- simulator


def authenticate(url: str) -> str:
    data = json.dumps({"LoginName": DEFAULT_LOGIN, "Password": DEFAULT_PASSWORD})
    answer = httpx.post(f"{url}{AUTH_PATH}", data={"data": data}, timeout=30).json()
    if answer.get("Status") != 0:
        raise RuntimeError(f"simulator refused the login: {answer.get('Message')}")
    return answer["Value"]["Token"]


# --------------------------------------------------------------------------- payloads


def publicworks_cases(mappings: MappingSet, n: int, *, seed: int) -> list[Case]:
    """Generated cases that route to public works (the department simulated)."""
    return routed_cases(mappings, DEPARTMENT, n, seed=seed, oversample=20)


def create_bodies(mappings: MappingSet, cases: list[Case], token: str) -> list[bytes]:
    """The exact form bodies the adapter sends: the hub's own mapping, OtherSystemId = hub id."""
    mapping = mappings.departments[DEPARTMENT]
    bodies = []
    for case in cases:
        data = mapping.build_payload(case)
        data["OtherSystemId"] = case.hub_id
        if not data.get("ProblemCode") and case.work_order_type:
            data["ProblemCode"] = case.work_order_type
        body = json.dumps(data, separators=(",", ":"), default=str)
        bodies.append(urlencode({"data": body, "token": token}).encode())
    return bodies


# --------------------------------------------------------------------------- bare loops

Send = Callable[[bytes], Awaitable[None]]


def check_envelope(status: int, answer: Any) -> None:
    if status != 200 or not isinstance(answer, dict) or answer.get("Status") != 0:
        raise RuntimeError(f"create failed: HTTP {status}, envelope {str(answer)[:200]}")


@dataclass
class LoopResult:
    seconds: float
    ok: int
    errors: int

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


# A transport failure is counted, not fatal: e.g. stock httpx under load reuses a pooled
# connection the server has just closed on keep-alive timeout (httpx.ReadError).
TRANSPORT_ERRORS = (httpx.TransportError, aiohttp.ClientError, TimeoutError)


async def run_workers(send: Send, bodies: list[bytes], concurrency: int) -> LoopResult:
    """C worker tasks share one iterator of bodies."""
    queue = iter(bodies)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for body in queue:
            try:
                await send(body)
            except TRANSPORT_ERRORS:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoopResult(time.perf_counter() - started, len(bodies) - errors, errors)


async def aiohttp_loop(url: str, bodies: list[bytes], concurrency: int) -> LoopResult:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(body: bytes) -> None:
            async with session.post(url + CREATE_PATH, data=body, headers=FORM) as response:
                check_envelope(response.status, await response.json(content_type=None))

        return await run_workers(send, bodies, concurrency)


async def httpx_loop(
    client: httpx.AsyncClient, bodies: list[bytes], concurrency: int
) -> LoopResult:
    async with client:

        async def send(body: bytes) -> None:
            response = await client.post(CREATE_PATH, content=body, headers=FORM)
            check_envelope(response.status_code, response.json())

        return await run_workers(send, bodies, concurrency)


def stock_httpx(url: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=CLIENT_TIMEOUT)


def hub_httpx(url: str, concurrency: int) -> httpx.AsyncClient:
    return make_async_client(base_url=url, timeout=CLIENT_TIMEOUT, max_connections=concurrency)


async def bare_loop(name: str, url: str, bodies: list[bytes], concurrency: int) -> LoopResult:
    if name == "aiohttp":
        return await aiohttp_loop(url, bodies, concurrency)
    client = stock_httpx if name == "httpx" else hub_httpx
    return await httpx_loop(client(url, concurrency), bodies, concurrency)


# --------------------------------------------------------------------------- the hub


@dataclass
class HubRun:
    intake_seconds: float
    dispatch_seconds: float
    delivered: int
    create_calls: int
    duplicates: int
    stats: dict[str, Any]
    cpu_seconds: float  # the whole process (every thread) while the Dispatcher ran


def hub_config(url: str, concurrency: int) -> HubConfig:
    settings = {
        "base_url": url,
        "login_name": DEFAULT_LOGIN,
        "password": {"env": PASSWORD_ENV},
        "timeout_seconds": CLIENT_TIMEOUT,
    }
    return department_hub_config(DEPARTMENT, settings, concurrency)


async def adapter_loop(hub: Hub, cases: list[Case], concurrency: int) -> float:
    """What Dispatcher._create does per case, minus the store: the HTTP path's ceiling."""
    adapter, mapping = hub.adapter(DEPARTMENT), hub.mapping(DEPARTMENT)
    queue = iter(cases)

    async def worker() -> None:
        for case in queue:
            payload = mapping.build_payload(case)
            digest(payload)
            order = OutboundWorkOrder(
                hub_id=case.hub_id,
                department=DEPARTMENT,
                work_order_type=case.work_order_type,
                priority=case.priority.value,
                payload=payload,
                evidence=case.evidence,
            )
            await adapter.create(order)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await hub.aclose()
    return len(cases) / (time.perf_counter() - started)


def delivered_count(hub: Hub, cases: list[Case]) -> int:
    with hub.uow() as uow:
        orders = (uow.work_orders.get(c.hub_id, DEPARTMENT) for c in cases)
        return sum(1 for o in orders if o is not None and o.delivery_state.value == "delivered")


def run_hub(hub: Hub, url: str, cases: list[Case], intake_seconds: float) -> HubRun:
    sim_admin(url, "reset")
    cpu_started = time.process_time()  # the simulator is another process: not counted
    dispatch_seconds, stats = asyncio.run(dispatch_all(hub))
    cpu_seconds = time.process_time() - cpu_started
    state = sim_state(url)
    return HubRun(
        intake_seconds=intake_seconds,
        dispatch_seconds=dispatch_seconds,
        delivered=delivered_count(hub, cases),
        create_calls=sum(state["create_calls"].values()),
        duplicates=len(state["duplicates"]),
        stats=stats,
        cpu_seconds=cpu_seconds,
    )


# --------------------------------------------------------------------------- one cell


@dataclass
class Cell:
    latency_ms: int
    concurrency: int
    n: int
    aiohttp_rps: float = 0.0
    httpx_rps: float = 0.0
    httpx_aiohttp_rps: float = 0.0
    adapter_rps: float = 0.0
    hub_cases_per_s: float = 0.0
    hub_end_to_end_cases_per_s: float = 0.0
    hub_cpu_ms_per_case: float = 0.0  # the hub process's CPU, not waiting on the simulator
    hub_slots_busy: float = 0.0  # mean share of the call slots in use (DispatchStats)
    hub_turn_ms_per_case: float = 0.0  # wall time of the database turns, per case
    hub_turn_cpu_ms_per_case: float = 0.0  # the turn thread's CPU in them, per case
    intake_cases_per_s: float = 0.0
    ratio_hub_vs_aiohttp: float = 0.0
    ratio_end_to_end_vs_aiohttp: float = 0.0
    delivered: int = 0
    create_calls: int = 0
    duplicates: int = 0
    client_errors: dict[str, int] = field(default_factory=dict)
    hub_stats: dict[str, Any] = field(default_factory=dict)
    ratio_hub_vs_aiohttp_runs: list[float] = field(default_factory=list)  # one per repeat


CLIENTS = {"aiohttp": "aiohttp_rps", "httpx": "httpx_rps", "httpx+aiohttp": "httpx_aiohttp_rps"}


def run_cell(
    url: str,
    store: Store,
    mappings: MappingSet,
    latency_ms: int,
    concurrency: int,
    n: int,
    repeat: int = 0,
) -> Cell:
    cell = Cell(latency_ms=latency_ms, concurrency=concurrency, n=n)
    sim_admin(url, "faults", {"latency_ms": latency_ms})
    hub = Hub(
        hub_config(url, concurrency),
        database=store.fresh(f"l{latency_ms}-c{concurrency}-r{repeat}"),
        mappings=mappings,
    )
    try:
        cases, intake_seconds = intake(hub, mappings, n, seed=latency_ms * 1000 + concurrency)
        bodies = create_bodies(mappings, cases, authenticate(url))
        for name, attribute in CLIENTS.items():
            sim_admin(url, "reset")
            result = asyncio.run(bare_loop(name, url, bodies, concurrency))
            setattr(cell, attribute, result.rate)
            if result.errors:
                cell.client_errors[name] = result.errors
        sim_admin(url, "reset")
        cell.adapter_rps = asyncio.run(adapter_loop(hub, cases, concurrency))
        run = run_hub(hub, url, cases, intake_seconds)
    finally:
        hub.dispose()
    fill_hub_figures(cell, run)
    return cell


def intake(hub: Hub, mappings: MappingSet, n: int, *, seed: int) -> tuple[list[Case], float]:
    cases = publicworks_cases(mappings, n, seed=seed)
    started = time.perf_counter()
    results = IntakeService(hub).submit_many(cases, actor="benchmark")
    elapsed = time.perf_counter() - started
    if not all(r.created and r.route for r in results):
        raise RuntimeError("intake did not accept and route every case")
    return [r.case for r in results], elapsed


def fill_hub_figures(cell: Cell, run: HubRun) -> None:
    n = cell.n
    cell.hub_cases_per_s = n / run.dispatch_seconds
    cell.hub_end_to_end_cases_per_s = n / (run.intake_seconds + run.dispatch_seconds)
    cell.hub_cpu_ms_per_case = run.cpu_seconds / n * 1000
    cell.hub_slots_busy = run.stats["slots_busy"]
    cell.hub_turn_ms_per_case = run.stats["turn_seconds"] / n * 1000
    cell.hub_turn_cpu_ms_per_case = run.stats["turn_cpu_seconds"] / n * 1000
    cell.intake_cases_per_s = n / run.intake_seconds
    cell.ratio_hub_vs_aiohttp = cell.hub_cases_per_s / cell.aiohttp_rps
    cell.ratio_hub_vs_aiohttp_runs = [cell.ratio_hub_vs_aiohttp]
    cell.ratio_end_to_end_vs_aiohttp = cell.hub_end_to_end_cases_per_s / cell.aiohttp_rps
    cell.delivered, cell.create_calls = run.delivered, run.create_calls
    cell.duplicates, cell.hub_stats = run.duplicates, run.stats


MEDIAN_FIELDS = (
    "aiohttp_rps",
    "httpx_rps",
    "httpx_aiohttp_rps",
    "adapter_rps",
    "hub_cases_per_s",
    "hub_end_to_end_cases_per_s",
    "hub_cpu_ms_per_case",
    "hub_slots_busy",
    "hub_turn_ms_per_case",
    "hub_turn_cpu_ms_per_case",
    "intake_cases_per_s",
    "ratio_hub_vs_aiohttp",
    "ratio_end_to_end_vs_aiohttp",
)


def combine(runs: list[Cell]) -> Cell:
    """One cell from repeated runs: the median of each rate and of the per-run ratios
    (not the ratio of medians: a run's hub is compared with that run's bare loop), the
    worst of the correctness counts, and every run's ratio."""
    first = runs[0]
    cell = Cell(latency_ms=first.latency_ms, concurrency=first.concurrency, n=first.n)
    for name in MEDIAN_FIELDS:
        setattr(cell, name, statistics.median(getattr(run, name) for run in runs))
    cell.delivered = min(run.delivered for run in runs)
    cell.create_calls = max(run.create_calls for run in runs)
    cell.duplicates = max(run.duplicates for run in runs)
    for run in runs:
        for client, count in run.client_errors.items():
            cell.client_errors[client] = cell.client_errors.get(client, 0) + count
    cell.hub_stats = runs[-1].hub_stats
    cell.ratio_hub_vs_aiohttp_runs = [run.ratio_hub_vs_aiohttp for run in runs]
    return cell


# --------------------------------------------------------------------------- output

COLUMNS: list[tuple[str, str, str]] = [  # title, field, format spec (no width)
    ("lat ms", "latency_ms", "d"),
    ("conc", "concurrency", "d"),
    ("n", "n", "d"),
    ("aiohttp/s", "aiohttp_rps", ".0f"),
    ("httpx/s", "httpx_rps", ".0f"),
    ("httpx+aio/s", "httpx_aiohttp_rps", ".0f"),
    ("adapter/s", "adapter_rps", ".0f"),
    ("hub/s", "hub_cases_per_s", ".0f"),
    ("hub e2e/s", "hub_end_to_end_cases_per_s", ".0f"),
    ("hub cpu ms", "hub_cpu_ms_per_case", ".2f"),
    ("slots", "hub_slots_busy", ".2f"),
    ("turn ms", "hub_turn_ms_per_case", ".2f"),
    ("hub/aio", "ratio_hub_vs_aiohttp", ".2f"),
    ("e2e/aio", "ratio_end_to_end_vs_aiohttp", ".2f"),
    ("dups", "duplicates", "d"),
    ("delivered", "delivered", "d"),
]


def table(cells: list[Cell]) -> str:
    rows = [[format(asdict(c)[key], spec) for _, key, spec in COLUMNS] for c in cells]
    titles = [title for title, _, _ in COLUMNS]
    widths = [max(len(v) for v in column) for column in zip(titles, *rows, strict=True)]
    lines = [" ".join(t.rjust(w) for t, w in zip(titles, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    lines += [" ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    for c in cells:
        if len(c.ratio_hub_vs_aiohttp_runs) > 1:
            each = ", ".join(f"{r:.2f}" for r in c.ratio_hub_vs_aiohttp_runs)
            lines.append(f"  {c.latency_ms} ms / {c.concurrency}: hub/aio per run {each}")
    for c in cells:
        for client, count in c.client_errors.items():
            lines.append(
                f"! {client}: {count} transport errors at {c.latency_ms} ms / {c.concurrency}"
            )
    return "\n".join(lines)


def document(cells: list[Cell], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    rounded = [{k: _rounded(v) for k, v in asdict(c).items()} for c in cells]
    ratios = [c.ratio_hub_vs_aiohttp for c in cells]
    return {
        "benchmark": "dispatch",
        "store": "postgresql" if args.postgres else "sqlite",
        "sqlite_synchronous": None if args.postgres else args.sqlite_sync,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "target_ratio": TARGET_RATIO,
        "min_ratio_hub_vs_aiohttp": round(min(ratios), 3) if ratios else None,
        "repeats": args.repeats,
        "seconds": round(seconds, 1),
        "cells": rounded,
    }


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per cell")
    parser.add_argument(
        "--cases-slow", type=int, default=100, help="cases per cell at concurrency 1 with latency"
    )
    parser.add_argument("--latencies", default="0,50", help="simulator latencies, ms")
    parser.add_argument("--concurrency", default="1,32,256", help="concurrency levels")
    parser.add_argument("--postgres", metavar="URL", help="use PostgreSQL instead of SQLite")
    parser.add_argument(
        "--sqlite-sync",
        default=os.environ.get(SQLITE_SYNCHRONOUS_ENV, "FULL"),
        choices=["FULL", "NORMAL", "OFF"],
        help="PRAGMA synchronous for the hub's SQLite (hub default FULL)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny N")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per cell; medians are reported"
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.quick:
        args.cases, args.cases_slow = min(args.cases, 40), min(args.cases_slow, 8)
    return args


def cell_size(args: argparse.Namespace, latency_ms: int, concurrency: int) -> int:
    return args.cases_slow if latency_ms and concurrency == 1 else args.cases


def run_matrix(args: argparse.Namespace, directory: Path, mappings: MappingSet) -> list[Cell]:
    latencies = [int(x) for x in args.latencies.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]
    cells: list[Cell] = []
    store = Store(directory, args.postgres)
    try:
        with simulator_process(DEPARTMENT, directory / "simulator.log") as url:
            for latency_ms, concurrency in itertools.product(latencies, levels):
                n = cell_size(args, latency_ms, concurrency)
                runs = [
                    run_cell(url, store, mappings, latency_ms, concurrency, n, repeat)
                    for repeat in range(args.repeats)
                ]
                cells.append(combine(runs))
                print(f"# latency {latency_ms} ms, concurrency {concurrency}: done", flush=True)
    finally:
        store.close()
    return cells


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ[SQLITE_SYNCHRONOUS_ENV] = args.sqlite_sync
    os.environ.setdefault(PASSWORD_ENV, DEFAULT_PASSWORD)
    mappings = load_mappings(REPO_MAPPINGS)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
        cells = run_matrix(args, Path(tmp), mappings)
    doc = document(cells, args, time.perf_counter() - started)
    print(table(cells))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
