"""`hub demo`: the whole flow in one process on the embedded default (SQLite).

Department simulators start on loopback ports with injected faults, realistic cases go
through intake and routing, a worker delivers them, and a table shows what happened.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hub.model import Case
from hub.services.dispatch import Dispatcher
from hub.services.intake import IntakeService
from hub.services.report import delivery_report
from hub.testing.harness import simulated_city

INTAKE_BATCH = 50


def _cases(hub, *, count: int, from_file: Path | None, seed: int, skipped: list[str]):
    """The cases to feed; rows of an export that cannot become a case go to `skipped`."""
    if from_file is None:
        from hub.testing.generator import CaseGenerator

        return iter(CaseGenerator(hub.mappings, seed=seed).generate(count))
    from hub.imports.crm import read_export

    def rows() -> Iterator[Case]:
        for row in read_export(from_file, catalogue=hub.mappings):
            if row.case is None:
                skipped.append(f"line {row.line}: {row.problem}")
                continue
            yield row.case

    return itertools.islice(rows(), count)


def _batches(items: Iterable[Case], size: int) -> Iterator[list[Case]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


async def _feed_and_deliver(hub, cases: Iterable[Case], total: int, progress: Progress | None):
    intake = IntakeService(hub)
    dispatcher = Dispatcher(hub, worker_id="demo-worker")
    stop = asyncio.Event()
    worker = asyncio.create_task(dispatcher.run(stop=stop))
    fed = 0
    task = progress.add_task("intake", total=total) if progress else None
    for batch in _batches(cases, INTAKE_BATCH):
        await asyncio.to_thread(intake.submit_many, batch, actor="demo")
        fed += len(batch)
        if progress:
            progress.update(task, completed=fed)
        await asyncio.sleep(0)
    if progress:
        progress.update(task, total=fed, completed=fed)
    delivered_task = progress.add_task("delivery", total=fed) if progress else None
    while True:
        pending = await asyncio.to_thread(_pending, hub)
        if progress:
            progress.update(delivered_task, completed=fed - pending)
        if pending == 0 or worker.done():
            break
        await asyncio.sleep(0.2)
    stop.set()
    await worker
    await hub.aclose()
    return fed, dispatcher.stats


async def _close_and_sync(hub, city, *, share: float = 0.4) -> dict[str, dict[str, int]]:
    """Crews close some work orders; a status poll brings the closures back; a dry-run
    reconcile counts what still differs. Per department: closed, reopened, drift."""
    from hub.adapters import DeliveryError
    from hub.services.reconcile import Reconciler
    from hub.services.sync import StatusSync

    sync = StatusSync(hub, actor="demo")
    for name in city.servers:
        simulator = city.simulator(name)
        # The storm has passed: the status and reconcile phase runs on a calm network, so
        # the demo's closure figures do not depend on how many reads a fault ate.
        simulator.set_faults("none")
        records = getattr(simulator, "records", {})
        simulator.advance(max(1, int(len(records) * share)), close=True)
    for department in sync.pollable():
        for _ in range(5):  # the demo's department is flaky on purpose
            try:
                await sync.poll(department)
                break
            except DeliveryError:
                await asyncio.sleep(0.2)
    report = await Reconciler(hub).run()
    await hub.aclose()
    flows = await asyncio.to_thread(_status_flows, hub)
    return {
        name: {
            **flows.get(name, {"closed": 0, "reopened": 0}),
            "drift": None if r.incomplete else sum(r.counts.values()),  # None: not readable
        }
        for name, r in report.departments.items()
    }


def _status_flows(hub) -> dict[str, dict[str, int]]:
    from sqlalchemy import func, select

    from hub.store import tables as t

    u = t.status_updates
    query = (
        select(u.c.department, u.c.status, func.count())
        .where(u.c.source.in_(["poll", "push", "file", "reconcile"]))
        .group_by(u.c.department, u.c.status)
    )
    flows: dict[str, dict[str, int]] = {}
    with hub.uow() as uow:
        for department, status, n in uow.connection.execute(query):
            row = flows.setdefault(department, {"closed": 0, "reopened": 0})
            if status in ("resolved", "closed"):
                row["closed"] += n
            elif status == "reopened":
                row["reopened"] += n
    return flows


def _pending(hub) -> int:
    with hub.uow() as uow:
        stats = uow.outbox.stats()
    configured = set(hub.configured_departments())
    return sum(s.pending for d, s in stats.items() if d in configured)


def run_demo(
    *,
    cases: int = 200,
    faults: str = "flaky",
    from_file: Path | None = None,
    directory: Path | None = None,
    seed: int = 7,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console()
    workdir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="hub-demo-"))
    fault_spec = faults if "seed=" in faults else f"{faults},seed={seed}"
    with simulated_city(
        workdir, faults=fault_spec, timeout_seconds=1.0, hang_seconds=1.5, gis=True, payments=True
    ) as city:
        hub = city.hub()
        if not hub.configured_departments():
            console.print("no departments configured yet")
        skipped: list[str] = []
        case_iter = _cases(hub, count=cases, from_file=from_file, seed=seed, skipped=skipped)
        started = time.perf_counter()
        bar = _progress(console) if progress else None
        if bar:
            bar.start()
        try:
            fed, stats = asyncio.run(_feed_and_deliver(hub, case_iter, cases, bar))
        finally:
            if bar:
                bar.stop()
        elapsed = time.perf_counter() - started
        flows = asyncio.run(_close_and_sync(hub, city))
        reports = delivery_report(hub)
        for name in city.servers:
            if name in reports:
                reports[name].duplicates = len(city.state(name)["duplicates"])
        hub.dispose()
    summary = {
        "database": city.database_url,
        "cases": fed,
        "skipped_rows": len(skipped),
        "faults": fault_spec,
        "seconds": round(elapsed, 2),
        "cases_per_second": round(fed / elapsed, 1) if elapsed else None,
        "worker": stats.as_dict(),
        "departments": {
            name: {**r.as_dict(), **flows.get(name, {"closed": 0, "reopened": 0, "drift": None})}
            for name, r in sorted(reports.items())
        },
    }
    _print_table(console, summary, configured=set(city.servers))
    return summary


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _print_table(console: Console, summary: dict[str, Any], *, configured: set[str]) -> None:
    table = Table(
        title=f"hub demo: {summary['cases']} cases in {summary['seconds']} s"
        f" (faults: {summary['faults']})"
    )
    for column in (
        "department",
        "received",
        "delivered",
        "retried",
        "dead-lettered",
        "duplicates",
        "waiting",
        "p50 ms",
        "p95 ms",
        "closed",
        "reopened",
        "drift",
    ):
        table.add_column(column, justify="left" if column == "department" else "right")
    for name, r in summary["departments"].items():
        waiting = str(r["pending"] + r["held"])
        if name not in configured:
            name += " (not configured yet)"
        table.add_row(
            name,
            str(r["received"]),
            str(r["delivered"]),
            str(r["retried"]),
            str(r["dead_lettered"]),
            "-" if r["duplicates"] is None else str(r["duplicates"]),
            waiting,
            _ms(r["p50_ms"]),
            _ms(r["p95_ms"]),
            str(r["closed"]),
            str(r["reopened"]),
            "-" if r["drift"] is None else str(r["drift"]),
        )
    console.print(table)
    if summary["skipped_rows"]:
        console.print(f"{summary['skipped_rows']} export rows could not become cases (see --json)")
    console.print(f"database: {summary['database']}", markup=False)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
