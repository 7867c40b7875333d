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

Prints a table, then the JSON document as the last line (``--json-out FILE`` saves it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from hub.adapters import OutboundWorkOrder  # noqa: E402
from hub.config import DeliveryPolicy, DepartmentConfig, HubConfig, WorkerConfig  # noqa: E402
from hub.mapping import MappingSet, load_mappings  # noqa: E402
from hub.model import Case  # noqa: E402
from hub.services.dispatch import Dispatcher  # noqa: E402
from hub.services.intake import IntakeService  # noqa: E402
from hub.services.runtime import Hub  # noqa: E402
from hub.store.migrate import upgrade  # noqa: E402
from hub.testing.generator import CaseGenerator  # noqa: E402
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


# --------------------------------------------------------------------------- simulator


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def simulator_process(log: Path) -> Iterator[str]:
    """`hub simulate codeenforcement` in its own process (own event loop, own GIL)."""
    port = free_port()
    command = [sys.executable, "-m", "hub.cli", "simulate", DEPARTMENT, "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start: {log.read_text()[-2000:]}")
            try:
                httpx.get(f"{url}/__sim__/state", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def sim(url: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    if body is None:
        response = httpx.get(f"{url}/__sim__/{action}", timeout=120)
    else:
        response = httpx.post(f"{url}/__sim__/{action}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


# --------------------------------------------------------------------------- the hub


def hub_config(url: str, concurrency: int) -> HubConfig:
    worker = WorkerConfig(
        concurrency=concurrency, batch_size=min(max(concurrency, 1), 256), idle_poll_seconds=0.05
    )
    department = DepartmentConfig(
        adapter=DEPARTMENT,
        settings={
            "base_url": url,
            "username": DEFAULT_USERNAME,
            "password": {"env": CE_PASSWORD_ENV},
            "timeout_seconds": CLIENT_TIMEOUT,
        },
        delivery=DeliveryPolicy(max_concurrency=concurrency),
    )
    return HubConfig(mappings=REPO_MAPPINGS, departments={DEPARTMENT: department}, worker=worker)


def ce_cases(mappings: MappingSet, n: int, *, seed: int) -> list[Case]:
    generated = CaseGenerator(mappings, seed=seed).generate(n * 40)
    routed = (c for c in generated if (r := mappings.route(c)) and r.department == DEPARTMENT)
    cases = list(itertools.islice(routed, n))
    if len(cases) < n:
        raise RuntimeError(f"the generator gave only {len(cases)} code-enforcement cases")
    return cases


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


async def dispatch_all(hub: Hub) -> float:
    started = time.perf_counter()
    try:
        await Dispatcher(hub).run(until_empty=True, timeout=600)
    finally:
        await hub.aclose()
    return time.perf_counter() - started


def fresh_database(directory: Path, name: str, postgres: str | None) -> str:
    if postgres:
        from sqlalchemy import create_engine, text

        schema = f"bench_{name}_{os.getpid()}"
        engine = create_engine(postgres)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        from sqlalchemy.engine import make_url

        url = make_url(postgres).update_query_dict({"options": f"-csearch_path={schema}"})
        database = url.render_as_string(hide_password=False)
    else:
        database = f"sqlite:///{directory / f'{name}.db'}"
    upgrade(database)
    return database


def run_cell(url: str, cell: Cell, directory: Path, postgres: str | None, seed: int) -> None:
    sim(url, "faults", {"latency_ms": cell.latency_ms})
    mappings = load_mappings(REPO_MAPPINGS)
    name = f"l{cell.latency_ms}c{cell.concurrency}"
    # adapter alone
    sim(url, "reset", {})
    hub = Hub(
        hub_config(url, cell.concurrency), database=fresh_database(directory, name + "a", None)
    )
    cases = ce_cases(mappings, cell.cases, seed=seed)
    for case in cases:
        case.hub_id = f"bench-a-{case.source_id}"
    cell.adapter_per_s = round(asyncio.run(adapter_loop(hub, cases, cell.concurrency)), 1)
    hub.dispose()
    # the hub end to end
    sim(url, "reset", {})
    hub = Hub(hub_config(url, cell.concurrency), database=fresh_database(directory, name, postgres))
    results = IntakeService(hub).submit_many(ce_cases(mappings, cell.cases, seed=seed + 1))
    seconds = asyncio.run(dispatch_all(hub))
    state = sim(url, "state")
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
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.latencies, args.concurrency = 60, "0", "1,16"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault(CE_PASSWORD_ENV, DEFAULT_PASSWORD)
    cells = [
        Cell(latency_ms=int(latency), concurrency=int(conc), cases=args.cases)
        for latency in args.latencies.split(",")
        for conc in args.concurrency.split(",")
    ]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hub-soap-bench-") as tmp:
        directory = Path(tmp)
        with simulator_process(directory / "simulator.log") as url:
            for cell in cells:
                run_cell(url, cell, directory, args.postgres, args.seed)
                print(
                    f"  {cell.latency_ms} ms x {cell.concurrency}: {cell.hub_per_s} cases/s",
                    file=sys.stderr,
                )
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


if __name__ == "__main__":
    main()
