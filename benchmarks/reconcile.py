"""Reconciliation at scale: 1,000,000 work orders, hub side and department side.

The public-works simulator runs in its own process and is seeded there in bulk (no HTTP
creates); the hub's SQLite database is seeded with plain executemany. Known drift:

- ``missing``: delivered hub work orders whose department record was removed;
- ``orphan``:  department records carrying hub references the hub does not know;
- ``drift``:   department status ``Dispatch`` where the hub last applied ``New``;
- ``stuck``:   hub work orders whose create was dead-lettered.

Then one dry-run ``Reconciler.run`` (the real public-works adapter over HTTP, with a
``list_records`` listing built on Search + ByIds) is timed in this process, and its peak
RSS measured (the simulator's memory is its own process's). Targets: every seeded drift
found, no false positives, <= 60 s, <= 300 MB.

    .venv/bin/python benchmarks/reconcile.py            # 1,000,000 work orders
    .venv/bin/python benchmarks/reconcile.py --quick    # 20,000

Prints a table, then the JSON document as the last line (``--json-out FILE`` saves it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.publicworks.adapter import SR, PublicWorksAdapter  # noqa: E402
from hub.adapters import DepartmentEvent  # noqa: E402
from hub.config import DepartmentConfig, HubConfig, build_adapter  # noqa: E402
from hub.services.reconcile import Reconciler  # noqa: E402
from hub.services.runtime import Hub  # noqa: E402
from hub.store.migrate import upgrade  # noqa: E402
from hub.testing.harness import PASSWORD_ENV, REPO_MAPPINGS  # noqa: E402
from hub.testing.simulators.publicworks import (  # noqa: E402
    DEFAULT_LOGIN,
    DEFAULT_PASSWORD,
    PublicWorksSimulator,
)

FIRST_ID = 100001  # the simulator's first RequestId


def reference(i: int) -> str:
    return f"bench-{i:07d}"


def plan(n: int, drift: int) -> dict[str, range]:
    """Which indexes carry which drift (disjoint; the rest are clean)."""
    return {
        "missing": range(0, drift),
        "drift": range(drift, 2 * drift),
        "stuck": range(n - drift, n),  # never delivered: no department record
    }


class ListingPublicWorksAdapter(PublicWorksAdapter):
    """Public works plus a paged listing (Search for every id, then ByIds pages).

    The cursor is the id list and an offset: ints only, the records are never all held."""

    async def list_records(self, cursor: Any, limit: int) -> tuple[list[DepartmentEvent], Any]:
        if cursor is None:
            ids = await self.client.call(SR + "Search", {}, idempotent=True)
            cursor = (ids, 0)
        ids, offset = cursor
        page = ids[offset : offset + limit]
        records = await self._by_ids(page)
        nxt = (ids, offset + limit) if offset + limit < len(ids) else None
        return [self._event(r) for r in records], nxt


# --------------------------------------------------------------------------- simulator


def _serve(n: int, drift: int, orphans: int, ready: Any) -> None:
    import socket

    import uvicorn

    simulator = PublicWorksSimulator()
    p = plan(n, drift)
    delivered = n - drift  # the stuck ones never reached the department
    statuses = ((reference(i), "Dispatch" if i in p["drift"] else "New") for i in range(delivered))
    simulator.seed(statuses)
    for i in p["missing"]:
        simulator.lose(FIRST_ID + i)
    simulator.seed((f"orphan-{j:06d}", "New") for j in range(orphans))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    ready.put(sock.getsockname()[1])
    config = uvicorn.Config(simulator.app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


# --------------------------------------------------------------------------- hub side


def seed_hub(path: Path, n: int, drift: int) -> None:
    upgrade(f"sqlite:///{path}")
    p = plan(n, drift)
    stamp = (datetime.now(UTC) - timedelta(days=1)).replace(tzinfo=None).isoformat(sep=" ")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA journal_mode=WAL")
    chunk = 20_000
    for start in range(0, n, chunk):
        rows = range(start, min(n, start + chunk))
        conn.executemany(
            "INSERT INTO cases (hub_id, service_code, status, version, requested_at, updated_at,"
            " body) VALUES (?, 'POTHOLE', 'in_queue', 1, ?, ?, '{}')",
            [(reference(i), stamp, stamp) for i in rows],
        )
        conn.executemany(
            "INSERT INTO work_orders (case_id, department, external_id, raw_status,"
            " mapped_status, delivery_state, created_at, updated_at)"
            " VALUES (?, 'publicworks', ?, ?, ?, ?, ?, ?)",
            [
                (reference(i), None, None, None, "dead", stamp, stamp)
                if i in p["stuck"]
                else (reference(i), str(FIRST_ID + i), "New", "in_queue", "delivered", stamp, stamp)
                for i in rows
            ],
        )
        conn.commit()
    conn.close()


# --------------------------------------------------------------------------- run


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def reconcile(db: Path, url: str, batch: int) -> tuple[dict, float]:
    os.environ.setdefault(PASSWORD_ENV, DEFAULT_PASSWORD)
    dept = DepartmentConfig(
        adapter="publicworks",
        settings={
            "base_url": url,
            "login_name": DEFAULT_LOGIN,
            "password": {"env": PASSWORD_ENV},
            "timeout_seconds": 120,
            "batch_size": 1000,
        },
    )
    hub = Hub(
        HubConfig(mappings=REPO_MAPPINGS, departments={"publicworks": dept}),
        database=f"sqlite:///{db}",
    )
    hub._adapters["publicworks"] = build_adapter(
        "publicworks", dept, ListingPublicWorksAdapter, source=None
    )
    started = time.perf_counter()
    report = await Reconciler(hub, batch_size=batch).run("publicworks")
    seconds = time.perf_counter() - started
    await hub.aclose()
    hub.dispose()
    return report.as_dict(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-orders", type=int, default=1_000_000)
    parser.add_argument("--drift", type=int, default=250, help="seeded per class")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="20,000 work orders")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    n = 20_000 if args.quick else args.work_orders
    drift = min(args.drift, n // 10)
    workdir = Path(tempfile.mkdtemp(prefix="hub-reconcile-bench-"))
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    server = ctx.Process(target=_serve, args=(n, drift, drift, ready), daemon=True)
    t0 = time.perf_counter()
    server.start()
    seed_hub(workdir / "hub.db", n, drift)
    port = ready.get(timeout=600)
    seed_seconds = time.perf_counter() - t0
    try:
        report, seconds = asyncio.run(
            reconcile(workdir / "hub.db", f"http://127.0.0.1:{port}", args.batch)
        )
    finally:
        server.terminate()
        server.join(10)
    found = report["counts"]
    expected = {"missing": drift, "orphan": drift, "drift": drift, "stuck": drift}
    dept = report["departments"]["publicworks"]
    result = {
        "work_orders": n,
        "department_records": n - 2 * drift + drift,
        "seeded": expected,
        "found": found,
        "all_found_no_false_positives": found == expected,
        "compared": dept["compared"],
        "listed": dept["listed"],
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "seed_seconds": round(seed_seconds, 1),
        "targets": {"seconds": 60, "peak_rss_mb": 300},
        "python": sys.version.split()[0],
    }
    result["meets_targets"] = (
        result["all_found_no_false_positives"] and seconds <= 60 and result["peak_rss_mb"] <= 300
    )
    print(f"{'work orders':>14} {'seconds':>8} {'peak MB':>8}  missing orphan drift stuck  ok")
    print(
        f"{n:>14,} {result['seconds']:>8} {result['peak_rss_mb']:>8}  "
        f"{found['missing']:>7} {found['orphan']:>6} {found['drift']:>5} {found['stuck']:>5}"
        f"  {result['meets_targets']}"
    )
    document = json.dumps(result)
    if args.json_out:
        args.json_out.write_text(document)
    print(document)


if __name__ == "__main__":
    main()
