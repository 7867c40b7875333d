"""Intake throughput: concurrent Open311 form POSTs against `hub serve`, from another process.

For each store (SQLite with synchronous FULL and NORMAL; PostgreSQL with ``--postgres``)
and each concurrency, this script migrates a fresh database, creates an API key, starts
``hub serve`` (uvicorn, one process) on a loopback port, and drives realistic
``POST /open311/v2/requests.json`` bodies (CaseGenerator) with an aiohttp client from this
process. Every answer must be 201; afterwards the case count in the store must equal the
number of accepted requests (nothing lost, nothing doubled).

    .venv/bin/python benchmarks/intake.py                   # SQLite FULL + NORMAL, ~1 min
    .venv/bin/python benchmarks/intake.py --quick           # smoke run (< 30 s)
    .venv/bin/python benchmarks/intake.py --postgres postgresql+psycopg://postgres@127.0.0.1/test
    .venv/bin/python benchmarks/intake.py --workers 1,2     # also `hub serve --workers 2`

The client runs on uvloop with pre-encoded bodies and one keep-alive connection per
concurrent worker; its CPU share (of one core, while driving) is printed as `client%`, the
server processes' as `server%`, so a reader can see which side saturated the 2 cores.

Prints a table, then the JSON document as the last line (``--json-out FILE`` saves it).
Target (issue 7): >= 1,500 requests/s with p99 < 50 ms. SQLite's default durability is
synchronous=FULL; the NORMAL rows are for comparison only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from benchmarks.proc_cpu import process_tree_cpu  # noqa: E402
from hub.mapping import load_mappings  # noqa: E402
from hub.services.apikeys import ApiKeyService  # noqa: E402
from hub.store.db import SQLITE_SYNCHRONOUS_ENV, make_engine  # noqa: E402
from hub.store.migrate import upgrade  # noqa: E402
from hub.testing.generator import CaseGenerator  # noqa: E402

PATH = "/open311/v2/requests.json"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TARGET_RPS, TARGET_P99_MS = 1500, 50.0


@dataclass
class Cell:
    store: str
    workers: int
    concurrency: int
    n: int
    ok: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cases_in_store: int
    client_cpu_pct: float
    server_cpu_pct: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- stores


@contextmanager
def sqlite_store(synchronous: str) -> Iterator[tuple[str, dict[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="hub-intake-") as tmp:
        url = f"sqlite:///{tmp}/hub.db"
        upgrade(url)
        yield url, {SQLITE_SYNCHRONOUS_ENV: synchronous}


@contextmanager
def postgres_store(base: str) -> Iterator[tuple[str, dict[str, str]]]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    try:
        upgrade(url)
        yield url, {}
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def count_cases(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("select count(*) from cases")).scalar_one()
    finally:
        engine.dispose()


def new_key(url: str) -> str:
    engine = make_engine(url)
    try:
        return ApiKeyService(engine).create("bench")[1]
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- server


@contextmanager
def server(url: str, env: dict[str, str], workers: int = 1) -> Iterator[tuple[str, int]]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "hub.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    full_env = {**os.environ, "HUB_DATABASE_URL": url, **env}
    full_env.pop("HUB_CONFIG", None)
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(base, proc))
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"hub serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                async with session.get(base + "/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("hub serve did not become ready")


# --------------------------------------------------------------------------- client


def bodies(n: int, key: str, seed: int) -> list[bytes]:
    forms = CaseGenerator(load_mappings(ROOT / "mappings"), seed=seed).generate_open311_form(n)
    return [urlencode({**form, "api_key": key}, doseq=True).encode() for form in forms]


def run_loop(coro):
    """uvloop when installed: the load generator must stay cheap next to the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def drive(
    base: str, payloads: list[bytes], concurrency: int
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    queue = iter(payloads)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            for body in queue:
                start = time.perf_counter()
                async with session.post(base + PATH, data=body, headers=FORM) as response:
                    await response.read()
                    if response.status != 201:
                        errors += 1
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def run_cell(
    store: str,
    url: str,
    env: dict[str, str],
    concurrency: int,
    n: int,
    warmup: int,
    seed: int,
    workers: int = 1,
) -> Cell:
    key = new_key(url)
    payloads = bodies(n + warmup, key, seed)
    with server(url, env, workers) as (base, pid):
        run_loop(drive(base, payloads[:warmup], min(concurrency, 8)))
        client0, server0 = time.process_time(), process_tree_cpu(pid)
        latencies, errors, elapsed = run_loop(drive(base, payloads[warmup:], concurrency))
        client_cpu = time.process_time() - client0
        server_cpu = process_tree_cpu(pid) - server0
    ok = len(latencies) - errors
    return Cell(
        store,
        workers,
        concurrency,
        n,
        ok,
        errors,
        round(elapsed, 3),
        round(ok / elapsed, 1),
        round(percentile(latencies, 0.50), 2),
        round(percentile(latencies, 0.99), 2),
        round(max(latencies) * 1000, 2),
        count_cases(url) - warmup,
        round(100 * client_cpu / elapsed, 1),
        round(100 * server_cpu / elapsed, 1),
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="POSTs per cell")
    parser.add_argument("--concurrency", default="1,32,128", help="comma list")
    parser.add_argument("--synchronous", default="FULL,NORMAL", help="SQLite modes, comma list")
    parser.add_argument("--postgres", help="also run on this PostgreSQL URL")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--workers", default="1", help="hub serve --workers, comma list")
    parser.add_argument("--quick", action="store_true", help="smoke run: few requests")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    n, warmup = (150, 20) if args.quick else (args.requests, 200)
    concurrencies = [16] if args.quick else [int(c) for c in args.concurrency.split(",")]
    modes = ["FULL"] if args.quick else [m.strip().upper() for m in args.synchronous.split(",")]
    stores = [] if args.no_sqlite else [(f"sqlite/{m}", lambda m=m: sqlite_store(m)) for m in modes]
    if args.postgres:
        stores.append(("postgresql", lambda: postgres_store(args.postgres)))
    worker_counts = [int(w) for w in args.workers.split(",")]
    cells = []
    for name, make_store in stores:
        for workers in worker_counts:
            for concurrency in concurrencies:
                with make_store() as (url, env):
                    cells.append(
                        run_cell(name, url, env, concurrency, n, warmup, args.seed, workers)
                    )
    report = {
        "benchmark": "intake",
        "target": {"rps": TARGET_RPS, "p99_ms": TARGET_P99_MS},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "cells": [asdict(c) for c in cells],
    }
    print_table(cells)
    line = json.dumps(report)
    if args.json_out:
        args.json_out.write_text(line)
    print(line)
    return report


def print_table(cells: list[Cell]) -> None:
    header = (
        f"{'store':<14}{'procs':>6}{'conc':>6}{'n':>7}{'ok':>7}{'err':>5}{'req/s':>9}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'stored':>8}{'client%':>9}{'server%':>9}"
    )
    print(header)
    print("-" * len(header))
    for c in cells:
        print(
            f"{c.store:<14}{c.workers:>6}{c.concurrency:>6}{c.n:>7}{c.ok:>7}{c.errors:>5}"
            f"{c.rps:>9.0f}{c.p50_ms:>9.1f}{c.p99_ms:>9.1f}{c.max_ms:>9.1f}"
            f"{c.cases_in_store:>8}{c.client_cpu_pct:>9.0f}{c.server_cpu_pct:>9.0f}"
        )


if __name__ == "__main__":
    main()
