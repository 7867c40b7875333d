"""Backlog drain: N cases queued while public works is down, then recovery at its limit.

1. Outage: the simulator answers 503 to everything; two `hub worker` processes run until
   the circuit breaker has opened (the queue waits, attempts are not burnt).
2. Recovery: the simulator answers again, with a 429 + Retry-After to 3% of calls. The
   backlog drains at the department's configured ``rate_limit_per_second`` shared by
   both workers through the database's token bucket.

The simulator logs every create call's arrival; the achieved rate is printed per window
and checked against the limit (±10%, windows after the first and before the last).

    .venv/bin/python benchmarks/backlog.py                  # 100,000 cases at 250/s
    .venv/bin/python benchmarks/backlog.py --quick          # 3,000 cases at 100/s

Prints a table, then the JSON document as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from hub.config import DeliveryPolicy  # noqa: E402
from hub.services.intake import IntakeService  # noqa: E402
from hub.store import tables as t  # noqa: E402
from hub.testing.harness import SimulatedCity, simulated_city  # noqa: E402
from hub.testing.simulators.base import SimulatorServer  # noqa: E402
from hub.testing.simulators.publicworks import PublicWorksSimulator  # noqa: E402
from hub.testing.soak import RequestLog, WorkerPool, postgres_schema, write_config  # noqa: E402
from tests.services.conftest import publicworks_cases  # noqa: E402

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOLERANCE = 0.10


def settled(city: SimulatedCity) -> tuple[int, int]:
    """(work orders delivered, dead-lettered)."""
    from sqlalchemy import create_engine

    engine = create_engine(city.database_url)
    state = t.work_orders.c.delivery_state
    try:
        with engine.connect() as conn:
            counts = dict(conn.execute(select(state, func.count()).group_by(state)).all())
    finally:
        engine.dispose()
    return counts.get("delivered", 0), counts.get("dead", 0)


def windows(stamps: list[float], start: float, width: float) -> list[float]:
    """Create calls per second in consecutive windows of `width` seconds from `start`."""
    counts: dict[int, int] = {}
    for s in stamps:
        if s >= start:
            counts[int((s - start) // width)] = counts.get(int((s - start) // width), 0) + 1
    return [counts.get(i, 0) / width for i in range(max(counts) + 1)] if counts else []


def run(args: argparse.Namespace, directory: Path, url: str) -> dict[str, Any]:
    policy = DeliveryPolicy(
        max_attempts=12,
        backoff_base_seconds=0.2,
        backoff_cap_seconds=5.0,
        breaker_failures=10,
        breaker_cooldown_seconds=2.0,
        rate_limit_per_second=args.rate,
    )
    simulator = PublicWorksSimulator(faults={"error_5xx": 1.0})  # the outage
    log = RequestLog(simulator.app)  # create calls: the rate
    every = RequestLog(log, suffixes=("",))  # every request: what the outage saw
    with (
        simulated_city(
            directory, database_url=url, delivery=policy, gis=False, payments=False
        ) as city,
        SimulatorServer(every) as server,
    ):
        city.servers = {"publicworks": server}
        hub = city.hub()
        started = time.perf_counter()
        cases = publicworks_cases(hub.mappings, args.cases, seed=5)
        for start in range(0, len(cases), 5000):
            IntakeService(hub).submit_many(cases[start : start + 5000], actor="backlog")
        intake_s = time.perf_counter() - started
        hub.dispose()
        config = write_config(
            city,
            directory / "hub.yaml",
            worker={"concurrency": 256, "batch_size": 128, "idle_poll_seconds": 0.05},
        )
        pool = WorkerPool(config, url, directory / "logs", scheduler=False)
        pool.start_all(args.workers)
        try:
            time.sleep(args.outage_seconds)
            outage_calls, outage_creates = len(every.stamps), len(log.stamps)
            simulator.set_faults(
                {"rate_limit_429": args.rate_limit_share, "retry_after_seconds": 1, "seed": 3}
            )
            recovered = time.monotonic()
            deadline = recovered + args.cases / args.rate * 2 + 60
            while sum(settled(city)) < args.cases and time.monotonic() < deadline:
                time.sleep(0.5)
            drain_s = time.monotonic() - recovered
        finally:
            pool.stop()
        done, dead = settled(city)
        state = simulator.state()
    stamps = sorted(s for s in log.stamps if s >= recovered)
    rates = windows(stamps, recovered, args.window)
    # Steady: the windows after the first (workers warming up) that end before the queue
    # is nearly empty (99% of the calls made; the tail is a half-filled window).
    emptied = stamps[int(0.99 * (len(stamps) - 1))] - recovered if stamps else 0.0
    steady = rates[1 : int(emptied // args.window)] or rates
    within = all(abs(r - args.rate) <= TOLERANCE * args.rate for r in steady)
    return {
        "cases": args.cases,
        "workers": args.workers,
        "rate_limit_per_second": args.rate,
        "intake_seconds": round(intake_s, 1),
        "outage_seconds": args.outage_seconds,
        "calls_during_outage": outage_calls,  # any endpoint (sign-in, lookups, creates)
        "creates_during_outage": outage_creates,
        "drain_seconds": round(drain_s, 1),
        "delivered": done,
        "dead_lettered": dead,
        "duplicates": len(state["duplicates"]),
        "answered_429": state["faults"].get("rate_limit_429", 0),
        "achieved_rate_overall": round(len(stamps) / drain_s, 1) if drain_s else 0.0,
        "window_seconds": args.window,
        "rates_per_window": [round(r, 1) for r in rates],
        "steady_min": round(min(steady), 1) if steady else 0.0,
        "steady_max": round(max(steady), 1) if steady else 0.0,
        "within_10_percent": within,
    }


def table(doc: dict[str, Any]) -> str:
    lines = [f"{'window':>8} {'calls/s':>8} {'vs limit':>9}", "-" * 27]
    for n, rate in enumerate(doc["rates_per_window"]):
        start = n * doc["window_seconds"]
        lines.append(f"{start:>7.0f}s {rate:>8.1f} {rate / doc['rate_limit_per_second']:>8.0%}")
    lines.append(
        f"limit {doc['rate_limit_per_second']}/s; steady windows {doc['steady_min']}-"
        f"{doc['steady_max']}/s; within ±10%: {doc['within_10_percent']}; delivered"
        f" {doc['delivered']}/{doc['cases']} in {doc['drain_seconds']} s; dead letters"
        f" {doc['dead_lettered']}; 429s answered"
        f" {doc['answered_429']}; duplicates {doc['duplicates']}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=250.0, help="rate_limit_per_second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--outage-seconds", type=float, default=6.0)
    parser.add_argument("--rate-limit-share", type=float, default=0.03, help="429 share")
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--postgres", metavar="URL", default=PG_DEFAULT)
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead (one file)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.rate = min(args.cases, 3000), min(args.rate, 100.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            directory = args.keep
        else:
            tmp = tempfile.TemporaryDirectory(prefix="hub-backlog-")
            directory = Path(stack.enter_context(tmp))
        if args.sqlite:
            doc = run(args, directory, f"sqlite:///{directory / 'hub.db'}")
        else:
            with postgres_schema(args.postgres, prefix="hubbacklog") as url:
                doc = run(args, directory, url)
    doc = {"benchmark": "backlog", "store": "sqlite" if args.sqlite else "postgresql", **doc}
    print(table(doc))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))
    ok = doc["within_10_percent"] and doc["duplicates"] == 0 and doc["delivered"] == doc["cases"]
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("HUB_LOG_LEVEL", "WARNING")
    sys.exit(main())
