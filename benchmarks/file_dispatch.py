"""File-drop dispatch throughput: cases/s from intake to a committed batch in the drop.

For each (drop, batch window) cell: N sanitation cases are written by intake, then the
Dispatcher claims them and the sanitation adapter group-commits them into batch files
(atomic write + sidecar + ledger) until the outbox is empty. The contractor simulator
(running in-process) takes the batches; the run is checked for one contractor job per case.

    .venv/bin/python benchmarks/file_dispatch.py            # local dir and SFTP, ~1 minute
    .venv/bin/python benchmarks/file_dispatch.py --quick    # smoke run
    .venv/bin/python benchmarks/file_dispatch.py --retention 5000   # + what a year leaves

``--retention N`` adds one cell on a local drop (decision 0009): N work orders sent and
N-1% closed, then what the adapter still holds in memory, what is left in ledger/, how
long a lookup of an old work order takes, and what a steady poll lists and reads with
400 days of archive day folders behind it.

Prints a table, then the JSON document as the last line (``--json-out FILE`` saves it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.sanitation import SanitationAdapter
from adapters.sanitation.files import INBOUND, LEDGER
from adapters.sanitation.testing import SanitationHarness
from hub.adapters import OutboundWorkOrder
from hub.config import DepartmentConfig, WorkerConfig
from hub.services.dispatch import Dispatcher
from hub.services.intake import IntakeService
from hub.services.runtime import Hub
from hub.testing.generator import CaseGenerator
from hub.testing.harness import REPO_MAPPINGS, simulated_city

STATUS_HEADER = "CaseRef,ContractorRef,Status,ReasonCode,CompletedAt,Crew,Notes,PhotoUrl\r\n"


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


# --------------------------------------------------------------------------- retention


def status_file(rows: list[tuple[str, str]]) -> bytes:
    """A contractor status file: (hub id, status) per row."""
    lines = (f"{h},{i:08d},{c},,03/02/2026 09:15,Crew 7,,\r\n" for i, (h, c) in enumerate(rows))
    return (STATUS_HEADER + "".join(lines)).encode()


def order(hub_id: str) -> OutboundWorkOrder:
    return OutboundWorkOrder(
        hub_id=hub_id, department="sanitation", work_order_type="MT", payload={"Address": "1 A"}
    )


async def send_and_close(adapter: SanitationAdapter, root: Path, n: int) -> list[str]:
    """N work orders in batches of 500; the contractor closes 99 of every 100."""
    ids = [f"case-{i:07d}" for i in range(n)]
    for start in range(0, n, 500):
        await asyncio.gather(*(adapter.create(order(h)) for h in ids[start : start + 500]))
    for start in range(0, n, 1000):
        chunk = range(start, min(start + 1000, n))
        rows = [(ids[i], "DISPATCHED" if i % 100 == 0 else "COLLECTED") for i in chunk]
        (root / INBOUND / f"COMPLETIONS_{start}.csv").write_bytes(status_file(rows))
    return ids


def archive_history(root: Path, hub_id: str, days: int) -> None:
    """One archived status file a day for `days` days back, in its day folder."""
    for day in range(1, days + 1):
        when = datetime.now(UTC) - timedelta(days=day)
        folder = root / "archive" / f"{when:%Y%m%d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{when:%Y%m%dT%H%M%S%fZ}_{day:016x}_COMPLETIONS.csv"
        (folder / name).write_bytes(status_file([(hub_id, "COLLECTED")]))


async def poll_to_the_end(adapter: SanitationAdapter, since: datetime) -> datetime:
    """Page after page, as the status sync does; returns the last watermark."""
    more = True
    while more:
        page = await adapter.poll_changes(since)
        since, more = page.next_watermark or since, page.more
    return since


def counted_drop(adapter: SanitationAdapter) -> Counter[str]:
    calls: Counter[str] = Counter()
    for method in ("list", "read"):
        original = getattr(adapter.drop, method)

        async def counted(folder: str, *args: Any, _m: str = method, _o: Any = original) -> Any:
            calls[_m] += 1
            return await _o(folder, *args)

        setattr(adapter.drop, method, counted)
    return calls


async def retention_run(n: int, root: Path) -> dict[str, Any]:
    settings = {"path": str(root), "mappings_dir": str(REPO_MAPPINGS),
                "batch_max_wait_seconds": 0.05, "ledger_compact_after_seconds": 0,
                "maintenance_every_seconds": 0, "closed_idle_seconds": 0}  # fmt: skip
    adapter = SanitationAdapter.from_settings(settings)
    await adapter.poll_changes(datetime.now(UTC))  # folders
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ids = await send_and_close(adapter, root, n)
    ledger_before = len(list((root / LEDGER).iterdir()))
    since = datetime.now(UTC) - timedelta(seconds=1)
    since = await poll_to_the_end(adapter, since)  # triage, compaction, events
    since += timedelta(seconds=1)  # the status sync moves on
    await adapter.poll_changes(since)
    gc.collect()  # what the adapter holds, not the pages the caller let go of
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    archive_history(root, ids[1], 400)  # 400 days of archive behind the next polls
    calls = counted_drop(adapter)
    started = time.perf_counter()
    await adapter.poll_changes(since)
    poll_ms = (time.perf_counter() - started) * 1000
    poll_calls = dict(calls)
    fresh = SanitationAdapter.from_settings(settings)  # another process: nothing in memory
    lookups = []
    for hub_id in random.Random(7).sample(ids, 200):
        started = time.perf_counter()
        assert await fresh.find_by_reference(hub_id) is not None
        lookups.append((time.perf_counter() - started) * 1000)
    return {
        "work_orders": n,
        "open": sum(1 for i in range(n) if i % 100 == 0),
        "held_after": adapter.footprint(),
        "held_kib": round(held / 1024),
        "ledger_files_before": ledger_before,
        "ledger_files_after": len(list((root / LEDGER).iterdir())),
        "index_files": sum(1 for p in (root / "index").rglob("*.json")),
        "old_lookup_ms_p50": round(statistics.median(lookups), 2),
        "old_lookup_ms_max": round(max(lookups), 2),
        "steady_poll_ms": round(poll_ms, 1),
        "steady_poll_drop_calls": poll_calls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--windows", default="0.05,0.25", help="batch windows, seconds")
    parser.add_argument("--drops", default="local,sftp")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny N")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--retention", type=int, default=0, metavar="N",
                        help="also: memory and drop cost after N work orders")  # fmt: skip
    parser.add_argument("--skip-dispatch", action="store_true", help="only --retention")
    args = parser.parse_args(argv)
    n = 100 if args.quick else args.cases
    windows = [float(w) for w in args.windows.split(",")][: 1 if args.quick else None]
    cells = []
    with tempfile.TemporaryDirectory(prefix="file-bench-") as tmp:
        cells_wanted = (
            [] if args.skip_dispatch else list(itertools.product(args.drops.split(","), windows))
        )
        for i, (drop, window) in enumerate(cells_wanted):
            cells.append(run_cell(drop, window, n, Path(tmp) / f"cell{i}"))
        kept = None
        if args.retention:
            kept = asyncio.run(retention_run(args.retention, Path(tmp) / "kept"))
    print(f"{'drop':6} {'window s':>8} {'cases':>6} {'seconds':>8} {'cases/s':>8} {'batches':>8}")
    for c in cells:
        print(f"{c['drop']:6} {c['batch_window_s']:>8} {c['cases']:>6} {c['seconds']:>8}"
              f" {c['cases_per_second']:>8} {c['batches']:>8}")  # fmt: skip
    if kept:
        print(
            f"retention: {kept['work_orders']} sent, {kept['open']} open; holds"
            f" {kept['held_after']} ({kept['held_kib']} KiB)"
        )
        print(f"  ledger files {kept['ledger_files_before']} -> {kept['ledger_files_after']};"
              f" old lookup p50 {kept['old_lookup_ms_p50']} ms (max"
              f" {kept['old_lookup_ms_max']}); steady poll, 400 days behind:"
              f" {kept['steady_poll_ms']} ms, {kept['steady_poll_drop_calls']}")  # fmt: skip
    doc = {"benchmark": "file_dispatch", "machine": platform.platform(), "cells": cells}
    if kept:
        doc["retention"] = kept
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
