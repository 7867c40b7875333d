"""Queue stats over a year of outbox history: what `hub departments status` and a
/metrics scrape (`hub top`) cost.

Fills a fresh, migrated database with `--rows` outbox rows spread over three departments,
one in `--open-every` still pending and the rest done (the history a year leaves), plus
a fourth department whose rows are all done. Then times `OutboxRepository.stats()` and
the metrics snapshot (`read_snapshot`) a few times each, and prints the best and median
milliseconds and the departments listed.

    .venv/bin/python benchmarks/queue_stats.py                      # SQLite, 1,000,000 rows
    .venv/bin/python benchmarks/queue_stats.py --postgres postgresql+psycopg://postgres@127.0.0.1/test

Prints a table, then the JSON document as the last line. The rows are written by the
database itself (generate_series / a recursive CTE), without their cases: the foreign key
is switched off for the fill only (PostgreSQL: session_replication_role; SQLite: a plain
connection, whose foreign keys are off by default).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from hub.model import utcnow  # noqa: E402
from hub.observability.metrics import read_snapshot  # noqa: E402
from hub.store.db import make_engine  # noqa: E402
from hub.store.migrate import upgrade  # noqa: E402
from hub.store.uow import UnitOfWork  # noqa: E402

DEPARTMENTS = ("publicworks", "codeenforcement", "sanitation")
FINISHED_ONLY = "payments"  # every delivery done: must still be listed, with zeros

# Row n: department n % 4 (the fourth only ever done), pending when (n // 4) % open_every == 0.
_FILL = """
    SELECT 'case-' || {n}, {department}, 'create', 'key-' || {n}, '{{}}',
           CASE WHEN {n} % 4 < 3 AND ({n} / 4) % :open_every = 0 THEN 'pending' ELSE 'done' END,
           1, {now}, {now}, {now}
"""
_COLUMNS = (
    "case_id, department, operation, idempotency_key, payload, state, attempts,"
    " next_attempt_at, created_at, updated_at"
)
_DEPARTMENT_OF = (
    f"CASE {{n}} % 4 WHEN 0 THEN '{DEPARTMENTS[0]}' WHEN 1 THEN '{DEPARTMENTS[1]}'"
    f" WHEN 2 THEN '{DEPARTMENTS[2]}' ELSE '{FINISHED_ONLY}' END"
)


def fill_postgres(engine: Engine, rows: int, open_every: int) -> None:
    select = _FILL.format(n="g", department=_DEPARTMENT_OF.format(n="g"), now="now()")
    with engine.begin() as c:
        c.execute(text("SET LOCAL session_replication_role = replica"))
        c.execute(
            text(f"INSERT INTO outbox ({_COLUMNS}) {select} FROM generate_series(1, :rows) g"),
            {"rows": rows, "open_every": open_every},
        )
        c.execute(text("ANALYZE outbox"))


def fill_sqlite(path: Path, rows: int, open_every: int) -> None:
    now = "'2026-12-07 00:00:00.000000'"
    select = _FILL.format(n="x", department=_DEPARTMENT_OF.format(n="x"), now=now)
    with sqlite3.connect(path) as c:
        c.execute(
            "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < :rows)"
            f" INSERT INTO outbox ({_COLUMNS}) {select} FROM g",
            {"rows": rows, "open_every": open_every},
        )
        c.execute("ANALYZE")


def time_stats(engine: Engine, repeats: int) -> tuple[list[float], dict[str, Any]]:
    timings, listed = [], {}
    for _ in range(repeats):
        started = time.perf_counter()
        with UnitOfWork(engine) as uow:
            stats = uow.outbox.stats()
        timings.append((time.perf_counter() - started) * 1000)
        listed = {d: {"pending": s.pending, "dead": s.dead} for d, s in sorted(stats.items())}
    return timings, listed


def time_snapshot(engine: Engine, repeats: int) -> list[float]:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        with engine.connect() as connection:
            snapshot = read_snapshot(connection, utcnow(), DEPARTMENTS)
        timings.append((time.perf_counter() - started) * 1000)
        if set(snapshot.queues) != set(DEPARTMENTS):  # the pending ones, not the done one
            raise RuntimeError(f"snapshot queues: {sorted(snapshot.queues)}")
    return timings


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    if args.postgres:
        schema = f"queuestats_{uuid.uuid4().hex[:8]}"
        admin = make_engine(args.postgres)
        with admin.begin() as c:
            c.execute(text(f"CREATE SCHEMA {schema}"))
        options = {"options": f"-csearch_path={schema}"}
        url = make_url(args.postgres).update_query_dict(options).render_as_string(False)
    else:
        path = directory / "queue.db"
        url = f"sqlite:///{path}"
    try:
        upgrade(url)
        engine = make_engine(url)
        started = time.perf_counter()
        if args.postgres:
            fill_postgres(engine, args.rows, args.open_every)
        else:
            fill_sqlite(path, args.rows, args.open_every)
        fill_seconds = time.perf_counter() - started
        timings, listed = time_stats(engine, args.repeats)
        snapshot_timings = time_snapshot(engine, args.repeats)
        engine.dispose()
    finally:
        if args.postgres:
            with admin.begin() as c:
                c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()
    return {
        "benchmark": "queue_stats",
        "store": "postgresql" if args.postgres else "sqlite",
        "rows": args.rows,
        "open_rows": sum(d["pending"] for d in listed.values()),
        "fill_seconds": round(fill_seconds, 1),
        "stats_ms_best": round(min(timings), 2),
        "stats_ms_median": round(statistics.median(timings), 2),
        "metrics_snapshot_ms_best": round(min(snapshot_timings), 2),
        "metrics_snapshot_ms_median": round(statistics.median(snapshot_timings), 2),
        "departments": listed,
    }


def table(doc: dict[str, Any]) -> str:
    head = (
        f"{'store':<11}{'rows':>11}{'open':>6}{'stats best':>12}{'stats median':>14}"
        f"{'metrics best':>14}{'metrics median':>16}"
    )
    row = (
        f"{doc['store']:<11}{doc['rows']:>11,}{doc['open_rows']:>6,}"
        f"{doc['stats_ms_best']:>12.2f}{doc['stats_ms_median']:>14.2f}"
        f"{doc['metrics_snapshot_ms_best']:>14.2f}{doc['metrics_snapshot_ms_median']:>16.2f}"
    )
    listed = "departments listed by stats(): " + ", ".join(doc["departments"])
    return f"{head}\n{'-' * len(head)}\n{row}\n(milliseconds) {listed}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="outbox rows")
    parser.add_argument("--open-every", type=int, default=1000, help="one pending in N")
    parser.add_argument("--repeats", type=int, default=5, help="timed stats() calls")
    parser.add_argument("--postgres", metavar="URL", help="use PostgreSQL instead of SQLite")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hub-queue-stats-") as tmp:
        doc = run(args, Path(tmp))
    print(table(doc))
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
