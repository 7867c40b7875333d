"""Replay: a city's year in fast-forward, end to end, on SQLite or PostgreSQL.

N real-shaped cases (hub.testing.generator.CaseGenerator: service mix, places, times and
requesters drawn from the distributions of the real records in ../shared/realworld/) go,
chunk by chunk, through:

intake (IntakeService.submit_many, routing included) -> dispatch to all three departments
(Dispatcher, in process) -> the crews (two status events per work order: one step, then
the closure, straight on the simulators) -> status sync (StatusSync.poll_all) -> closure.

Prints cases/s, p50/p99 intake-to-delivery and status lag (crew action to case closed,
per chunk), the time per phase and a cProfile summary. The cProfile covers the main
thread (intake, the event loop with the adapters' HTTP, the sync); the dispatcher's
database turns run in a thread pool and show up as the dispatch phase's wall time.

    .venv/bin/python benchmarks/replay.py --cases 20000
    .venv/bin/python benchmarks/replay.py --cases 20000 --postgres postgresql+psycopg://postgres@127.0.0.1/test

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
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from hub.config import WorkerConfig  # noqa: E402
from hub.model import FINISHED  # noqa: E402
from hub.services.dispatch import Dispatcher  # noqa: E402
from hub.services.intake import IntakeService  # noqa: E402
from hub.services.runtime import Hub  # noqa: E402
from hub.services.sync import StatusSync  # noqa: E402
from hub.store import tables as t  # noqa: E402
from hub.testing.generator import CaseGenerator  # noqa: E402
from hub.testing.harness import SimulatedCity, simulated_city  # noqa: E402
from hub.testing.soak import DEPARTMENTS, postgres_schema  # noqa: E402

TARGET_CASES, TARGET_SECONDS = 1_000_000, 1800


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
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}({name})"
        rows.append({"function": where, "calls": calls, "tottime": tottime, "cumtime": cumtime})
    rows.sort(key=lambda r: r["tottime"], reverse=True)
    return [
        {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows[:top]
    ]


def run(args: argparse.Namespace, directory: Path, url: str) -> dict[str, Any]:
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


def table(doc: dict[str, Any]) -> str:
    lines = [
        f"store {doc['store']}: {doc['cases']} cases ({doc['closed']} closed) in"
        f" {doc['seconds']} s = {doc['cases_per_s']} cases/s;"
        f" 1,000,000 would take {doc['extrapolated_1m_minutes']} min (target 30)",
        f"intake->delivery p50 {doc['p50_intake_to_delivery_s']} s, p99"
        f" {doc['p99_intake_to_delivery_s']} s; status lag p50 {doc['p50_status_lag_s']} s,"
        f" p99 {doc['p99_status_lag_s']} s",
        "phase                 seconds  share",
    ]
    total = sum(doc["phases_s"].values()) or 1
    for phase, secs in sorted(doc["phases_s"].items(), key=lambda kv: -kv[1]):
        lines.append(f"{phase:<20} {secs:>8.1f} {secs / total:>6.0%}")
    if doc["profile_top"]:
        lines.append("cProfile (main thread), top by own time:")
        for row in doc["profile_top"]:
            lines.append(f"  {row['tottime']:>7.2f}s {row['calls']:>9} {row['function']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=2000, help="cases per pipeline round")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL instead of SQLite")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json-out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hub-replay-") as tmp:
        directory = Path(tmp)
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
