"""File-drop dispatch throughput: cases/s from intake to a committed batch in the drop.

For each (drop, batch window) cell: N sanitation cases are written by intake, then the
Dispatcher claims them and the sanitation adapter group-commits them into batch files
(atomic write + sidecar + ledger) until the outbox is empty. The contractor simulator
(running in-process) takes the batches; the run is checked for one contractor job per case.

    .venv/bin/python benchmarks/file_dispatch.py            # local dir and SFTP, ~1 minute
    .venv/bin/python benchmarks/file_dispatch.py --quick    # smoke run

Prints a table, then the JSON document as the last line (``--json-out FILE`` saves it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.sanitation.testing import SanitationHarness
from hub.config import DepartmentConfig, WorkerConfig
from hub.services.dispatch import Dispatcher
from hub.services.intake import IntakeService
from hub.services.runtime import Hub
from hub.testing.generator import CaseGenerator
from hub.testing.harness import simulated_city


def cases_for(hub: Hub, n: int) -> list[Any]:
    generated = CaseGenerator(hub.mappings, seed=3).generate(n * 30)
    routed = (c for c in generated if (r := hub.mappings.route(c)) and r.department == "sanitation")
    return list(itertools.islice(routed, n))


async def deliver(hub: Hub) -> Any:
    try:
        return await Dispatcher(hub, worker_id="bench").run(until_empty=True, timeout=300)
    finally:
        await hub.aclose()  # in the same loop: the SFTP connection belongs to it


def run_cell(drop: str, window: float, n: int, directory: Path) -> dict[str, Any]:
    worker = WorkerConfig(idle_poll_seconds=0.02, batch_size=256, concurrency=512)
    with simulated_city(directory, worker=worker) as city:
        config = city.config()
        settings = dict(config.departments["sanitation"].settings)
        if drop == "sftp":
            harness = SanitationHarness()
            harness.sim = city.simulator("sanitation")  # type: ignore[assignment]
            harness.sim.start_sftp(directory / "host_key")
            os.environ.update(harness.env)
            settings = {**harness.settings(""), "timeout_seconds": 5.0}
        settings.update(batch_max_wait_seconds=window, batch_max_rows=2000)
        config.departments["sanitation"] = DepartmentConfig(
            adapter="sanitation", settings=settings, delivery=city.delivery
        )
        config.departments["sanitation"].delivery.max_concurrency = 512
        hub = Hub(config, database=city.database_url)
        IntakeService(hub).submit_many(cases_for(hub, n))
        started = time.perf_counter()
        stats = asyncio.run(deliver(hub))
        seconds = time.perf_counter() - started
        state = city.state("sanitation")
        hub.dispose()
    jobs = len(state["records"])
    assert jobs == n and not state["duplicates"], f"{jobs} jobs for {n} cases"
    return {
        "drop": drop,
        "batch_window_s": window,
        "cases": n,
        "seconds": round(seconds, 2),
        "cases_per_second": round(n / seconds, 1),
        "batches": state["files"].get("batches_taken", 0),
        "delivered": stats.attempts["delivered"],
        "duplicates": len(state["duplicates"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--windows", default="0.05,0.25", help="batch windows, seconds")
    parser.add_argument("--drops", default="local,sftp")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny N")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    n = 100 if args.quick else args.cases
    windows = [float(w) for w in args.windows.split(",")][: 1 if args.quick else None]
    cells = []
    with tempfile.TemporaryDirectory(prefix="file-bench-") as tmp:
        for i, (drop, window) in enumerate(itertools.product(args.drops.split(","), windows)):
            cells.append(run_cell(drop, window, n, Path(tmp) / f"cell{i}"))
    print(f"{'drop':6} {'window s':>8} {'cases':>6} {'seconds':>8} {'cases/s':>8} {'batches':>8}")
    for c in cells:
        print(f"{c['drop']:6} {c['batch_window_s']:>8} {c['cases']:>6} {c['seconds']:>8}"
              f" {c['cases_per_second']:>8} {c['batches']:>8}")  # fmt: skip
    doc = {"benchmark": "file_dispatch", "machine": platform.platform(), "cells": cells}
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
