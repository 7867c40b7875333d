"""SOAP dispatch throughput: cases/s end to end through the hub to the code-enforcement
SOAP simulator running in its own process on loopback.

For each (simulator latency, concurrency) cell:

- ``adapter``: C tasks calling the code-enforcement adapter's ``create`` (mapping, zeep
  envelope, WS-Security, the hub's httpx-over-aiohttp client, safe parse, zeep
  deserialization) with no store: the SOAP path's ceiling;
- ``hub``: cases written by intake, then claimed, delivered, acknowledged and recorded by
  the Dispatcher until the outbox is empty (SQLite WAL in a temp dir, or ``--postgres``).

Every run is checked: every case delivered, one create call per case, no duplicates.

    .venv/bin/python benchmarks/soap_dispatch.py            # 0/50 ms x 1/32/128, ~2 minutes
    .venv/bin/python benchmarks/soap_dispatch.py --quick    # smoke run, a few seconds
    .venv/bin/python benchmarks/soap_dispatch.py --per-call # CPU ms per adapter call

Prints a table, then the JSON document as the last line (``--json-out FILE`` saves it).

``--per-call`` measures instead what each adapter operation costs in CPU in this process
(the simulator runs in its own): ``create``, ``find_by_reference``, ``get_status`` (one
``GetCase``), ``add_note`` and ``poll_changes`` (one ``GetCasesChangedSince`` page of up to
``--poll-records`` real-shaped cases: open, inspected, cited and closed with photos), one
call at a time, the median of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    Store,
    dispatch_all,
    routed_cases,
    sim_admin,
    sim_state,
    simulator_process,
)
from benchmarks._common import hub_config as department_hub_config  # noqa: E402
from hub.adapters import OutboundNote, OutboundWorkOrder, StatusPage  # noqa: E402
from hub.config import HubConfig  # noqa: E402
from hub.mapping import MappingSet, load_mappings  # noqa: E402
from hub.model import Case  # noqa: E402
from hub.services.intake import IntakeService  # noqa: E402
from hub.services.runtime import Hub  # noqa: E402
from hub.testing.harness import CE_PASSWORD_ENV, REPO_MAPPINGS  # noqa: E402
from hub.testing.simulators.codeenforcement import (  # noqa: E402
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
)

DEPARTMENT = "codeenforcement"
CLIENT_TIMEOUT = 30.0


@dataclass
class Cell:
    latency_ms: int
    concurrency: int
    cases: int
    adapter_per_s: float = 0.0
    hub_per_s: float = 0.0
    hub_over_adapter: float = 0.0
    delivered: int = 0
    create_calls: int = 0
    duplicates: int = 0


# --------------------------------------------------------------------------- the hub


def hub_config(url: str, concurrency: int, **settings: Any) -> HubConfig:
    department = {
        "base_url": url,
        "username": DEFAULT_USERNAME,
        "password": {"env": CE_PASSWORD_ENV},
        "timeout_seconds": CLIENT_TIMEOUT,
        **settings,
    }
    return department_hub_config(DEPARTMENT, department, concurrency)


def ce_cases(mappings: MappingSet, n: int, *, seed: int) -> list[Case]:
    return routed_cases(mappings, DEPARTMENT, n, seed=seed, oversample=40)


async def adapter_loop(hub: Hub, cases: list[Case], concurrency: int) -> float:
    """What the dispatcher's create does per case, minus the store."""
    adapter, mapping = hub.adapter(DEPARTMENT), hub.mapping(DEPARTMENT)
    routed = [(c, hub.mappings.route(c)) for c in cases]
    queue = iter(routed)

    async def worker() -> None:
        for case, route in queue:
            case.work_order_type, case.team = route.work_order_type, route.team
            order = OutboundWorkOrder(
                hub_id=case.hub_id,
                department=DEPARTMENT,
                work_order_type=route.work_order_type,
                payload=mapping.build_payload(case),
            )
            await adapter.create(order)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await hub.aclose()
    return len(cases) / (time.perf_counter() - started)


@dataclass
class Stores:
    """SQLite for the adapter-alone runs (they need a hub, not its store), and the store
    under test for the hub runs."""

    sqlite: Store
    hub: Store

    @classmethod
    def open(cls, directory: Path, postgres: str | None) -> Stores:
        sqlite = Store(directory, None)
        return cls(sqlite=sqlite, hub=Store(directory, postgres) if postgres else sqlite)

    def close(self) -> None:
        self.hub.close()


def run_cell(url: str, cell: Cell, stores: Stores, seed: int) -> None:
    sim_admin(url, "faults", {"latency_ms": cell.latency_ms})
    mappings = load_mappings(REPO_MAPPINGS)
    name = f"l{cell.latency_ms}c{cell.concurrency}"
    # adapter alone
    sim_admin(url, "reset")
    hub = Hub(hub_config(url, cell.concurrency), database=stores.sqlite.fresh(name + "a"))
    cases = ce_cases(mappings, cell.cases, seed=seed)
    for case in cases:
        case.hub_id = f"bench-a-{case.source_id}"
    cell.adapter_per_s = round(asyncio.run(adapter_loop(hub, cases, cell.concurrency)), 1)
    hub.dispose()
    # the hub end to end
    sim_admin(url, "reset")
    hub = Hub(hub_config(url, cell.concurrency), database=stores.hub.fresh(name))
    results = IntakeService(hub).submit_many(ce_cases(mappings, cell.cases, seed=seed + 1))
    seconds, _ = asyncio.run(dispatch_all(hub))
    state = sim_state(url)
    with hub.uow() as uow:
        orders = (uow.work_orders.get(r.case.hub_id, DEPARTMENT) for r in results)
        cell.delivered = sum(1 for o in orders if o and o.delivery_state.value == "delivered")
    hub.dispose()
    cell.create_calls = sum(state["create_calls"].values())
    cell.duplicates = len(state["duplicates"])
    cell.hub_per_s = round(cell.cases / seconds, 1)
    cell.hub_over_adapter = round(cell.hub_per_s / cell.adapter_per_s, 2)
    if (cell.delivered, cell.create_calls, cell.duplicates) != (cell.cases, cell.cases, 0):
        raise AssertionError(f"cell {name} lost or duplicated cases: {asdict(cell)}")


# --------------------------------------------------------------------------- CPU per call


@dataclass
class CallCost:
    operation: str
    calls: int
    records_per_call: int
    cpu_ms_per_call: float
    wall_ms_per_call: float


Call = Callable[[], Awaitable[Any]]
PER_CALL_OPERATIONS = ("create", "find_by_reference", "get_status", "add_note", "poll_changes")


async def timed(calls: list[Call]) -> tuple[float, float]:
    """(CPU, wall) seconds of `calls` run one after the other. process_time counts every
    thread of this process; the simulator is another process, so this is the adapter's."""
    cpu, wall = time.process_time(), time.perf_counter()
    for call in calls:
        await call()
    return time.process_time() - cpu, time.perf_counter() - wall


def orders(hub: Hub, cases: list[Case]) -> list[OutboundWorkOrder]:
    mapping = hub.mapping(DEPARTMENT)
    built = []
    for case in cases:
        route = hub.mappings.route(case)
        case.work_order_type, case.team = route.work_order_type, route.team
        built.append(
            OutboundWorkOrder(
                hub_id=case.hub_id,
                department=DEPARTMENT,
                work_order_type=route.work_order_type,
                payload=mapping.build_payload(case),
            )
        )
    return built


def shape_records(url: str, n: int) -> None:
    """Give the round's cases the shapes a poll meets: a third closed (inspection, violation,
    two inspector photos), a third inspected with a violation cited, a third received."""
    for _ in range(4):  # Received → Assigned → Pending → Scheduled → Inspected - Violation
        sim_admin(url, "advance", {"count": 2 * n // 3})
    sim_admin(url, "advance", {"count": n // 3, "close": True})


async def one_round(
    hub: Hub, url: str, cases: list[Case], polls: int
) -> dict[str, tuple[float, float, int, int]]:
    """operation → (CPU s, wall s, calls, records per call) for one round."""
    adapter = hub.adapter(DEPARTMENT)
    built = orders(hub, cases)
    since = datetime.now(UTC)  # this round's cases only
    refs = []

    async def create(order: OutboundWorkOrder) -> None:
        refs.append(await adapter.create(order))

    costs = {"create": (*await timed([functools.partial(create, o) for o in built]), len(built))}
    ids = [r.external_id for r in refs]
    note = OutboundNote(text="Resident called again: the lot is still overgrown.")
    for name, calls in (
        (
            "find_by_reference",
            [functools.partial(adapter.find_by_reference, o.hub_id) for o in built],
        ),
        ("get_status", [functools.partial(adapter.get_status, [i]) for i in ids]),
        ("add_note", [functools.partial(adapter.add_note, i, note) for i in ids]),
    ):
        costs[name] = (*await timed(calls), len(calls))
    shape_records(url, len(ids))
    pages: list[StatusPage] = []

    async def poll() -> None:
        pages.append(await adapter.poll_changes(since))

    costs["poll_changes"] = (*await timed([poll] * polls), polls)
    records = len(pages[0].events) if pages else 0
    if any(len(p.events) != records for p in pages):
        raise AssertionError("polls of the same window gave different pages")
    return {k: (*v, records if k == "poll_changes" else 1) for k, v in costs.items()}


async def per_call_rounds(hub: Hub, url: str, rounds: list[list[Case]], polls: int) -> list[dict]:
    try:
        await one_round(hub, url, rounds[0][:3], 2)  # warm-up: WSDL, connection, caches
        return [await one_round(hub, url, cases, polls) for cases in rounds[1:]]
    finally:
        await hub.aclose()


def per_call(url: str, args: argparse.Namespace, store: Store) -> list[CallCost]:
    """Median CPU and wall time per call of each operation over `args.rounds` rounds."""
    sim_admin(url, "faults", {"latency_ms": 0})
    sim_admin(url, "reset")
    config = hub_config(url, 1, page_size=args.poll_records)
    hub = Hub(config, database=store.fresh("percall"))
    mappings = load_mappings(REPO_MAPPINGS)
    cases = ce_cases(mappings, 3 + args.rounds * args.poll_records, seed=args.seed)
    for case in cases:
        case.hub_id = f"bench-p-{case.source_id}"
    size = args.poll_records
    rounds = [cases[:3]] + [cases[3 + i * size : 3 + (i + 1) * size] for i in range(args.rounds)]
    try:
        measured = asyncio.run(per_call_rounds(hub, url, rounds, args.polls))
    finally:
        hub.dispose()
    return median_costs(measured)


def median_costs(measured: list[dict[str, tuple[float, float, int, int]]]) -> list[CallCost]:
    costs = []
    for name in PER_CALL_OPERATIONS:
        runs = [m[name] for m in measured]
        calls, records = runs[0][2], runs[0][3]
        costs.append(
            CallCost(
                operation=name,
                calls=calls,
                records_per_call=records,
                cpu_ms_per_call=round(statistics.median(r[0] for r in runs) * 1000 / calls, 3),
                wall_ms_per_call=round(statistics.median(r[1] for r in runs) * 1000 / calls, 3),
            )
        )
    return costs


def cost_table(costs: list[CallCost]) -> str:
    names = ("operation", "calls", "records", "cpu ms/call", "wall ms/call")
    head = " ".join(f"{n:>{w}}" for n, w in zip(names, (18, 6, 8, 12, 13), strict=True))
    rows = [
        f"{c.operation:>18} {c.calls:>6} {c.records_per_call:>8} {c.cpu_ms_per_call:>12.3f} "
        f"{c.wall_ms_per_call:>13.3f}"
        for c in costs
    ]
    return "\n".join([head, *rows])


def table(cells: list[Cell]) -> str:
    names = ("latency", "conc", "cases", "adapter/s", "hub/s", "hub/adapter")
    head = " ".join(f"{n:>{w}}" for n, w in zip(names, (8, 5, 6, 10, 8, 12), strict=True))
    rows = [
        f"{c.latency_ms:>6}ms {c.concurrency:>5} {c.cases:>6} {c.adapter_per_s:>10} "
        f"{c.hub_per_s:>8} {c.hub_over_adapter:>12}"
        for c in cells
    ]
    return "\n".join([head, *rows])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000, help="cases per cell")
    parser.add_argument("--latencies", default="0,50", help="simulator latencies, ms")
    parser.add_argument("--concurrency", default="1,32,128", help="concurrency levels")
    parser.add_argument("--postgres", help="PostgreSQL URL for the hub run (default SQLite)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 cases, 0 ms, c=1,16")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument(
        "--per-call", action="store_true", help="CPU ms per adapter call, by operation"
    )
    parser.add_argument("--rounds", type=int, default=3, help="--per-call: measured rounds")
    parser.add_argument(
        "--poll-records", type=int, default=200, help="--per-call: cases per round and poll page"
    )
    parser.add_argument("--polls", type=int, default=20, help="--per-call: polls per round")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.latencies, args.concurrency = 60, "0", "1,16"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault(CE_PASSWORD_ENV, DEFAULT_PASSWORD)
    if args.per_call:
        return main_per_call(args)
    cells = [
        Cell(latency_ms=int(latency), concurrency=int(conc), cases=args.cases)
        for latency in args.latencies.split(",")
        for conc in args.concurrency.split(",")
    ]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hub-soap-bench-") as tmp:
        directory = Path(tmp)
        stores = Stores.open(directory, args.postgres)
        try:
            with simulator_process(DEPARTMENT, directory / "simulator.log") as url:
                for cell in cells:
                    run_cell(url, cell, stores, args.seed)
                    print(
                        f"  {cell.latency_ms} ms x {cell.concurrency}: {cell.hub_per_s} cases/s",
                        file=sys.stderr,
                    )
        finally:
            stores.close()
    doc = {
        "benchmark": "soap_dispatch",
        "department": DEPARTMENT,
        "store": "postgresql" if args.postgres else "sqlite",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "seconds": round(time.perf_counter() - started, 1),
        "cells": [asdict(c) for c in cells],
    }
    print(table(cells))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc))
    return doc


def main_per_call(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hub-soap-bench-") as tmp:
        directory = Path(tmp)
        with simulator_process(DEPARTMENT, directory / "simulator.log") as url:
            costs = per_call(url, args, Store(directory, None))
    doc = {
        "benchmark": "soap_dispatch_per_call",
        "department": DEPARTMENT,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "rounds": args.rounds,
        "seconds": round(time.perf_counter() - started, 1),
        "operations": [asdict(c) for c in costs],
    }
    print(cost_table(costs))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc))
    return doc


if __name__ == "__main__":
    main()
