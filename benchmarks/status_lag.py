"""Status lag: from a department change to the case showing it, webhook and polling paths.

Against the real public-works simulator on loopback and a SQLite hub (the embedded
default). For each sample a crew closes one work order in the simulator at t0, then:

- ``webhook``: the department pushes a signed notification to ``POST /webhooks/
  publicworks`` (the hub's FastAPI router, served by uvicorn on loopback);
- ``polling``: a background loop runs ``StatusSync.poll`` every ``--interval`` seconds
  (the scheduler's job), and the sample ends when the case reads ``resolved``.

The lag is t(case reads resolved in the database) - t0. Polling lag is dominated by the
interval (expected p50 ~ interval / 2 + one poll).

    .venv/bin/python benchmarks/status_lag.py             # 50 webhook + 20 polling samples
    .venv/bin/python benchmarks/status_lag.py --quick

Prints a table, then the JSON document as the last line (``--json-out FILE`` saves it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi import FastAPI  # noqa: E402

from hub.api.webhooks import router  # noqa: E402
from hub.model import CaseStatus  # noqa: E402
from hub.services.dispatch import Dispatcher  # noqa: E402
from hub.services.intake import IntakeService  # noqa: E402
from hub.services.runtime import Hub  # noqa: E402
from hub.services.sync import StatusSync  # noqa: E402
from hub.services.webhooks import SIGNATURE_HEADER, signature_header  # noqa: E402
from hub.testing.generator import CaseGenerator  # noqa: E402
from hub.testing.harness import simulated_city  # noqa: E402
from hub.testing.simulators.base import SimulatorServer  # noqa: E402

SECRET_ENV, SECRET = "HUB_BENCH_WEBHOOK_SECRET", "bench-webhook-secret"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(lags: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in lags]
    return {
        "samples": len(ms),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "max_ms": round(max(ms), 1),
    }


async def setup(city, n: int) -> tuple[Hub, list[tuple[str, str]]]:
    config = city.config()
    config.departments["publicworks"].webhook_secret = {"env": SECRET_ENV}
    hub = Hub(config, database=city.database_url)
    generator = CaseGenerator(hub.mappings, seed=3).generate(n * 30)
    cases = [c for c in generator if (r := hub.mappings.route(c)) and r.department == "publicworks"]
    IntakeService(hub).submit_many(cases[:n])
    await Dispatcher(hub, worker_id="bench").run(until_empty=True, timeout=120)
    with hub.uow() as uow:
        orders = [uow.work_orders.get(c.hub_id, "publicworks") for c in cases[:n]]
    return hub, [(o.case_id, o.external_id) for o in orders if o and o.external_id]


async def wait_resolved(hub: Hub, case_id: str, t0: float, timeout: float = 30) -> float:
    while time.perf_counter() - t0 < timeout:
        status = await asyncio.to_thread(_status, hub, case_id)
        if status is CaseStatus.RESOLVED:
            return time.perf_counter() - t0
        await asyncio.sleep(0.005)
    raise TimeoutError(f"case {case_id} not resolved within {timeout}s")


def _status(hub: Hub, case_id: str) -> CaseStatus | None:
    with hub.uow() as uow:
        case = uow.cases.get(case_id)
    return case.status if case else None


def utc_sequence(hub: Hub, change: dict[str, Any]) -> str:
    """The change's UTC instant as the public-works poll writes it in its event ids."""
    stamp = datetime.fromisoformat(change["DateModified"])
    return hub.mapping("publicworks").local_to_utc(stamp).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def webhook_path(hub: Hub, simulator, pairs, url: str) -> list[float]:
    lags = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for case_id, external_id in pairs:
            t0 = time.perf_counter()
            [change] = simulator.advance(1, close=True, request_ids=[int(external_id)])
            body = json.dumps(
                {
                    "events": [
                        {
                            "event_id": f"{external_id}:Closed:{utc_sequence(hub, change)}",
                            "work_order_id": external_id,
                            "status": "Closed",
                            "occurred_at": change["DateModified"],
                            "closure_text": change["Resolution"],
                        }
                    ]
                }
            ).encode()
            response = await client.post(
                "/webhooks/publicworks",
                content=body,
                headers={
                    SIGNATURE_HEADER: signature_header(SECRET, body),
                    "Content-Type": "application/json",
                },
            )
            response.raise_for_status()
            lags.append(await wait_resolved(hub, case_id, t0))
    return lags


async def polling_path(hub: Hub, simulator, pairs, interval: float) -> list[float]:
    sync, stop, lags = StatusSync(hub), asyncio.Event(), []

    async def poller() -> None:
        while not stop.is_set():
            await sync.poll("publicworks")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    task = asyncio.create_task(poller())
    rng = random.Random(7)
    for case_id, external_id in pairs:
        await asyncio.sleep(rng.uniform(0, interval))  # changes land anywhere in the cycle
        t0 = time.perf_counter()
        simulator.advance(1, close=True, request_ids=[int(external_id)])
        lags.append(await wait_resolved(hub, case_id, t0, timeout=interval * 5 + 10))
    stop.set()
    await task
    return lags


async def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    os.environ[SECRET_ENV] = SECRET
    with simulated_city(directory, timeout_seconds=5.0) as city:
        hub, pairs = await setup(city, args.webhook + args.polling)
        simulator = city.simulator("publicworks")
        app = FastAPI()
        app.state.hub = hub
        app.include_router(router)
        with SimulatorServer(app) as api:
            webhook = await webhook_path(hub, simulator, pairs[: args.webhook], api.url)
        polling = await polling_path(hub, simulator, pairs[args.webhook :], args.interval)
        await hub.aclose()
        hub.dispose()
    return {
        "store": "sqlite",
        "poll_interval_s": args.interval,
        "webhook": summary(webhook),
        "polling": summary(polling),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhook", type=int, default=50, help="webhook samples")
    parser.add_argument("--polling", type=int, default=20, help="polling samples")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.webhook, args.polling, args.interval = 10, 4, 0.5
    result = asyncio.run(run(args, Path(tempfile.mkdtemp(prefix="hub-lag-bench-"))))
    print(f"{'path':<8} {'samples':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for path in ("webhook", "polling"):
        r = result[path]
        print(f"{path:<8} {r['samples']:>7} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8}")
    print(f"(polling every {args.interval:g} s)")
    document = json.dumps(result)
    if args.json_out:
        args.json_out.write_text(document)
    print(document)


if __name__ == "__main__":
    main()
