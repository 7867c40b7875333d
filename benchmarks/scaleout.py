"""Scale-out: 1, 2 and 4 `hub worker` processes on one PostgreSQL database.

The public-works (REST) and code-enforcement (SOAP) simulators each run in their own
process with 50 ms latency. For each worker count: a fresh schema, the workers started
and idle, then N real-shaped cases committed by intake at once; the clock runs from that
commit until every work order is delivered. Prints throughput, speed-up over one worker,
duplicates at the departments (must be 0) and how busy the machine's CPUs were (from
/proc/stat), since on a 2-core machine the CPUs, not the design, cap the speed-up.

Two series are run, because they answer different questions:

- ``latency-bound`` (8 calls in flight per worker, the default first series): each worker
  is limited by the department's 50 ms answers, not by a CPU, so the series shows what
  adding workers buys when each worker has a core to itself: the cost of sharing one
  queue (SKIP LOCKED claims, leases, fenced settles) is what remains of the speed-up.
- ``cpu-bound`` (128 calls in flight per worker): one worker already keeps a core busy;
  on this 2-core machine, shared with PostgreSQL and both simulators, more workers cannot
  pass the machine's capacity, whatever the design.

    .venv/bin/python benchmarks/scaleout.py --postgres postgresql+psycopg://postgres@127.0.0.1/test
    .venv/bin/python benchmarks/scaleout.py --quick

Prints a table, then the JSON document as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from benchmarks.dispatch import free_port, sim_admin, sim_state, wait_until_answering  # noqa: E402
from benchmarks.proc_cpu import (  # noqa: E402
    all_processes,
    machine_cpu,
    postgres_cpu,
    process_cpu,
)
from hub.config import WorkerConfig  # noqa: E402
from hub.services.intake import IntakeService  # noqa: E402
from hub.services.runtime import Hub  # noqa: E402
from hub.store import tables as t  # noqa: E402
from hub.store.migrate import upgrade  # noqa: E402
from hub.testing.generator import CaseGenerator  # noqa: E402
from hub.testing.harness import (  # noqa: E402
    CE_PASSWORD_ENV,
    PASSWORD_ENV,
    SimulatedCity,
)
from hub.testing.simulators import codeenforcement as ce_sim  # noqa: E402
from hub.testing.simulators.publicworks import DEFAULT_PASSWORD  # noqa: E402
from hub.testing.soak import WorkerPool, postgres_schema, write_config  # noqa: E402

DEPARTMENTS = ("publicworks", "codeenforcement")
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET = 3.5


@contextmanager
def simulator(department: str, latency_ms: int, log: Path):
    """`hub simulate <department>` in its own process (own GIL)."""
    import subprocess

    port = free_port()
    command = [sys.executable, "-m", "hub.cli", "simulate", department, "--port", str(port)]
    command += ["--faults", f"latency_ms={latency_ms}"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url, proc)
        yield SimpleNamespace(url=url, pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Run:
    concurrency: int
    workers: int
    cases: int
    seconds: float
    cases_per_s: float
    speedup: float
    duplicates: int
    intake_seconds: float  # intake's one transaction, before the clock starts
    cases_per_s_with_intake: float
    delivered: int
    machine_cpu_busy: float  # 0..1 over all cores
    worker_cpu_s: float  # CPU seconds used by the workers during the run
    worker_cpu_share: float  # of the machine's capacity
    cpu_ms_per_case: dict[str, float]  # machine CPU per delivered case, by role


def cases_for(hub: Hub, n: int, seed: int) -> list:
    picked = []
    for case in CaseGenerator(hub.mappings, seed=seed).generate(n * 3):
        route = hub.mappings.route(case)
        if route and route.department in DEPARTMENTS:
            picked.append(case)
        if len(picked) == n:
            return picked
    raise RuntimeError("the generator did not give enough cases for the two departments")


def delivered(hub: Hub) -> int:
    with hub.engine.connect() as conn:
        return conn.execute(
            select(func.count()).where(t.work_orders.c.delivery_state == "delivered")
        ).scalar_one()


def one_run(
    args, servers: dict[str, Any], workers: int, concurrency: int, directory: Path
) -> dict[str, Any]:
    for server in servers.values():
        sim_admin(server.url, "reset")
    with postgres_schema(args.postgres, prefix="hubscale") as url:
        upgrade(url)
        city = SimulatedCity(
            directory, url, servers=servers, timeout_seconds=30, worker=WorkerConfig()
        )
        config = write_config(
            city,
            directory / f"hub-{workers}.yaml",
            worker={"concurrency": concurrency, "batch_size": 64, "idle_poll_seconds": 0.05},
        )
        hub = city.hub()
        cases = cases_for(hub, args.cases, seed=workers)
        pool = WorkerPool(config, url, directory / "logs", scheduler=False)
        pool.start_all(workers)
        time.sleep(args.warmup)  # imports and first idle poll, outside the clock
        try:
            intake_started = time.perf_counter()
            IntakeService(hub).submit_many(cases, actor="scaleout")
            # The clock and the CPU counters start at intake's commit: the workers see no
            # row before it, and the one 4,000-case transaction is a fixed cost of the rig
            # (printed as intake s), not a cost of the workers.
            before_cpu = {p.pid: process_cpu(p.pid) or 0.0 for p in pool.processes.values()}
            before_roles = role_cpu(servers)
            busy0, total0 = machine_cpu()
            started = time.perf_counter()
            while delivered(hub) < len(cases) and time.perf_counter() - started < args.timeout:
                time.sleep(0.1)
            seconds = time.perf_counter() - started
            busy1, total1 = machine_cpu()
            used = sum((process_cpu(pid) or 0.0) - c for pid, c in before_cpu.items())
            roles = {k: v - before_roles[k] for k, v in role_cpu(servers).items()}
        finally:
            pool.stop()
        done = delivered(hub)
        hub.dispose()
    duplicates = sum(len(sim_state(s.url)["duplicates"]) for s in servers.values())
    cores = os.cpu_count() or 1
    return {
        "concurrency": concurrency,
        "workers": workers,
        "cases": len(cases),
        "seconds": seconds,
        "cases_per_s": done / seconds,
        "intake_seconds": started - intake_started,
        "cases_per_s_with_intake": done / (seconds + started - intake_started),
        "duplicates": duplicates,
        "delivered": done,
        "machine_cpu_busy": (busy1 - busy0) / max(1.0, total1 - total0),
        "worker_cpu_s": used,
        "worker_cpu_share": used / (seconds * cores),
        # Machine CPU per delivered case by role: where a 2-core machine's capacity goes.
        "cpu_ms_per_case": {
            "workers": used / max(1, done) * 1000,
            **{k: v / max(1, done) * 1000 for k, v in roles.items()},
            "machine": (busy1 - busy0) / max(1, done) * 1000,
        },
    }


def role_cpu(servers: dict[str, Any]) -> dict[str, float]:
    """CPU seconds so far of the rig's parts: each simulator, PostgreSQL (all its
    processes) and this process."""
    found = {f"simulator_{d}": process_cpu(s.pid) or 0.0 for d, s in servers.items()}
    found["postgres"] = sum(postgres_cpu(all_processes()).values())
    found["rig"] = process_cpu(os.getpid()) or 0.0  # the progress queries
    return found


def table(runs: list[Run]) -> str:
    head = f"{'in flight':>9} {'workers':>7} {'cases':>6} {'s':>7} {'cases/s':>8}"
    head += f" {'speed-up':>8} {'dups':>5}"
    head += f" {'delivered':>9} {'CPU busy':>8} {'workers CPU':>11}"
    head += f" {'intake s':>8} {'with intake/s':>13}"
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(
            f"{r.concurrency:>9} {r.workers:>7} {r.cases:>6} {r.seconds:>7.1f}"
            f" {r.cases_per_s:>8.0f}"
            f" {r.speedup:>7.2f}x {r.duplicates:>5} {r.delivered:>9}"
            f" {r.machine_cpu_busy:>7.0%} {r.worker_cpu_share:>10.0%}"
            f" {r.intake_seconds:>8.1f} {r.cases_per_s_with_intake:>13.0f}"
        )
    roles = list(runs[0].cpu_ms_per_case) if runs else []
    lines += ["", "CPU ms per case: " + " / ".join(roles)]
    for r in runs:
        figures = " / ".join(f"{r.cpu_ms_per_case[k]:.2f}" for k in roles)
        lines.append(f"{r.concurrency:>9} {r.workers:>7}  {figures}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", default=PG_DEFAULT)
    parser.add_argument("--cases", type=int, default=4000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument(
        "--concurrency",
        default="8,128",
        help="calls in flight per worker; a comma list runs one series each (latency-bound, "
        "cpu-bound)",
    )
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 cases")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.cases = min(args.cases, 300)
    return args


LATENCY_BOUND_MAX = 16  # calls in flight per worker that one core serves with room to spare


def series_name(runs: list[Run]) -> str:
    return "latency-bound" if runs[0].concurrency <= LATENCY_BOUND_MAX else "cpu-bound"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault(PASSWORD_ENV, DEFAULT_PASSWORD)
    os.environ.setdefault(CE_PASSWORD_ENV, ce_sim.DEFAULT_PASSWORD)
    series: list[list[Run]] = []
    with tempfile.TemporaryDirectory(prefix="hub-scaleout-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        servers = {
            d: stack.enter_context(simulator(d, args.latency_ms, directory / f"{d}.log"))
            for d in DEPARTMENTS
        }
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            raw: list[dict[str, Any]] = []
            for workers in (int(w) for w in args.workers.split(",")):
                raw.append(one_run(args, servers, workers, concurrency, directory))
                print(
                    f"# {concurrency} in flight x {workers} worker(s):"
                    f" {raw[-1]['cases_per_s']:.0f} cases/s",
                    flush=True,
                )
            base = raw[0]["cases_per_s"]
            series.append([Run(speedup=r["cases_per_s"] / base, **r) for r in raw])
    print(table([run for runs in series for run in runs]))
    doc = {
        "benchmark": "scaleout",
        "store": "postgresql",
        "latency_ms": args.latency_ms,
        "machine": {"cpus": os.cpu_count()},
        "target_speedup_4": TARGET,
        "series": [
            {
                "name": series_name(runs),
                "concurrency_per_worker": runs[0].concurrency,
                "speedup_max_workers": round(runs[-1].speedup, 2),
                "runs": [{k: _rounded(v) for k, v in asdict(r).items()} for r in runs],
            }
            for runs in series
        ],
        "duplicates": sum(r.duplicates for runs in series for r in runs),
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))
    return 0 if doc["duplicates"] == 0 else 1


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


if __name__ == "__main__":
    sys.exit(main())
