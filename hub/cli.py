"""The `hub` command. Each subcommand is a thin shell over a service; `--help` everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from hub.config import ConfigError, load_config

if TYPE_CHECKING:
    from hub.services.runtime import Hub

app = typer.Typer(
    help="Department integration hub: 311 cases in, work orders out, status back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Create or migrate the database schema.", no_args_is_help=True)
adapters_app = typer.Typer(help="Installed department adapters.", no_args_is_help=True)
mappings_app = typer.Typer(help="Declarative department mappings.", no_args_is_help=True)
config_app = typer.Typer(help="The hub configuration file (HUB_CONFIG).", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: deliveries that need a human.", no_args_is_help=True)
case_app = typer.Typer(help="Look at one case.", no_args_is_help=True)
departments_app = typer.Typer(help="Department queues and health.", no_args_is_help=True)
simulate_app = typer.Typer(help="Run a department simulator on a port.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys for Open311 writes (stored hashed).", no_args_is_help=True)
for sub, name in [
    (db_app, "db"),
    (adapters_app, "adapters"),
    (mappings_app, "mappings"),
    (config_app, "config"),
    (dlq_app, "dlq"),
    (case_app, "case"),
    (departments_app, "departments"),
    (simulate_app, "simulate"),
    (apikey_app, "apikey"),
]:
    app.add_typer(sub, name=name)

# Piped output (CI logs, files) gets a wide page instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $HUB_CONFIG or ./hub.yaml)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _hub(config: Path | None):
    from hub.services.runtime import Hub

    try:
        return Hub(load_config(config))
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False)
        raise typer.Exit(2) from exc


def _print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _configure_logging() -> None:
    """Long-running commands log JSON lines (HUB_LOG_FORMAT=text for humans), redacted."""
    from hub.observability.logging import configure_logging

    configure_logging()


# --------------------------------------------------------------------------- db


@db_app.command("upgrade")
def db_upgrade(
    url: Annotated[
        str | None, typer.Option(help="Database URL (default: $HUB_DATABASE_URL).")
    ] = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Create the schema or migrate it to the latest revision."""
    from hub.store.db import database_url, redact_url
    from hub.store.migrate import upgrade

    target = database_url(url)
    try:
        now_at = upgrade(target, revision)
    except Exception as exc:
        err.print(f"cannot migrate {redact_url(target)}: {exc}", markup=False)
        raise typer.Exit(1) from exc
    out.print(f"database {redact_url(target)} is at revision {now_at}", markup=False)


@db_app.command("current")
def db_current(url: Annotated[str | None, typer.Option(help="Database URL.")] = None) -> None:
    """Show the schema revision of the database."""
    from hub.store.db import database_url, redact_url
    from hub.store.migrate import current_revision, head_revision

    target = database_url(url)
    current = current_revision(target)
    out.print(
        f"{redact_url(target)}: {current or 'empty'} (latest: {head_revision()})", markup=False
    )


# --------------------------------------------------------------------------- adapters


@adapters_app.command("list")
def adapters_list(as_json: JsonOption = False) -> None:
    """Every installed adapter: name, transport, capabilities, config schema status."""
    from hub.plugins import AdapterRegistry, describe_adapter, make_plugin_manager

    rows = [describe_adapter(info) for info in AdapterRegistry.from_plugins(make_plugin_manager())]
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "transport", "capabilities", "config schema", "secrets", "from")
    for row in rows:
        table.add_row(
            row["name"],
            row["transport"],
            ", ".join(row["capabilities"]),
            row["config_schema"],
            ", ".join(row["secret_fields"]) or "-",
            f"{row['distribution'] or row['plugin']} {row['version'] or ''}".strip(),
        )
    out.print(table)
    if not rows:
        out.print("no adapters installed (entry-point group hub.adapters)")


# --------------------------------------------------------------------------- mappings / config


@mappings_app.command("validate")
def mappings_validate(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files to check (default: all).")
    ] = None,
) -> None:
    """Validate mapping files; print FILE:LINE: FIELD: message per problem, exit 1 if any."""
    from hub.mapping.validate import validate_paths

    problems = validate_paths(paths or None)
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        raise typer.Exit(1)
    typer.echo("mappings ok")


@config_app.command("validate")
def config_validate(config: ConfigOption = None) -> None:
    """Validate the config file, each department's adapter settings and its mapping."""
    from hub.config import build_adapter, config_path
    from hub.plugins import AdapterRegistry, PluginError, make_plugin_manager

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(problem)
        raise typer.Exit(1) from exc
    registry = AdapterRegistry.from_plugins(make_plugin_manager())
    problems: list[str] = []
    where = str(cfg.source or config_path(config))
    for name, dept in cfg.departments.items():
        try:
            build_adapter(name, dept, registry.get(dept.adapter), source=cfg.source)
        except PluginError as exc:
            problems.append(f"{where}: departments.{name}.adapter: {exc}")
        except ConfigError as exc:
            problems.extend(exc.problems)
    for problem in problems:
        typer.echo(problem)
    if problems:
        raise typer.Exit(1)
    if not cfg.departments:
        typer.echo("no departments configured yet")
    typer.echo(f"config ok ({len(cfg.departments)} departments)")


# --------------------------------------------------------------------------- worker


@app.command()
def worker(
    config: ConfigOption = None,
    drain: Annotated[bool, typer.Option(help="Exit when nothing is due.")] = False,
    worker_id: Annotated[str | None, typer.Option(help="Name in leases and timelines.")] = None,
    no_scheduler: Annotated[
        bool,
        typer.Option("--no-scheduler", help="Do not run the periodic polls and reconcile."),
    ] = False,
    no_dispatch: Annotated[
        bool,
        typer.Option(
            "--no-dispatch",
            help="Deliver nothing: run only the periodic polls and reconcile (e.g. beside"
            " the one delivering worker of a SQLite hub, to use a second core).",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics of this worker on this port.")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Interface for --metrics-port.")] = (
        "127.0.0.1"
    ),
) -> None:
    """Deliver the outbox: runs until stopped (SIGTERM/SIGINT finish in-flight calls).

    Also runs the status polls and the nightly reconcile (each run claimed in the
    database, so any number of workers run each one once) unless --no-scheduler;
    --no-dispatch runs only those."""
    if no_dispatch and (no_scheduler or drain):
        raise typer.BadParameter(
            "--no-dispatch runs only the scheduler: not with --no-scheduler or --drain"
        )
    import hub.services.outbound  # registers the reopen operation
    from hub.services.dispatch import Dispatcher, default_worker_id

    _configure_logging()
    hub = _hub(config)
    if metrics_port:
        from hub.observability.metrics import serve_metrics

        serve_metrics(hub, metrics_port, addr=metrics_host)
    if not hub.configured_departments():
        typer.echo("no departments configured yet")
    _warn_of_department_problems(hub)

    async def main() -> None:
        from hub.services.scheduler import Scheduler

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        dispatcher = Dispatcher(hub, worker_id=worker_id or default_worker_id())
        scheduler = None
        if not no_scheduler and not drain:
            scheduler = Scheduler(hub, worker_id=dispatcher.worker_id)
            scheduler.start()
        try:
            if no_dispatch:
                await stop.wait()
            stats = (
                dispatcher.stats if no_dispatch else await dispatcher.run(stop=stop, drain=drain)
            )
        finally:
            if scheduler is not None:
                scheduler.shutdown()
            await hub.aclose()
        typer.echo(json.dumps(stats.as_dict()))

    asyncio.run(main())


def _warn_of_department_problems(hub: Hub) -> None:
    """A department whose adapter cannot be built is named at start, not first met as a
    pause: the other departments still flow, so the worker starts anyway."""
    for department, problems in hub.department_problems().items():
        for problem in problems:
            typer.echo(f"warning: {problem}", err=True)
        typer.echo(
            f"warning: {department} pauses at its first delivery until the config is fixed"
            f" and `hub departments resume {department}` is run",
            err=True,
        )


# --------------------------------------------------------------------------- status sync

DepartmentOption = Annotated[
    str | None, typer.Option("--department", "-d", help="Only this department.")
]


@app.command()
def sync(
    config: ConfigOption = None, department: DepartmentOption = None, as_json: JsonOption = False
) -> None:
    """Poll department status changes now (what the scheduler does every interval)."""
    from hub.services.sync import NotPollable, StatusSync

    hub = _hub(config)
    service = StatusSync(hub, actor="cli")

    async def main() -> dict:
        try:
            if department:
                return {department: await service.poll(department)}
            return await service.poll_all()
        finally:
            await hub.aclose()

    try:
        results = asyncio.run(main())
    except NotPollable as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2) from exc
    rows = [r.as_dict() for r in results.values()]
    if as_json:
        _print_json(rows)
        return
    columns = ("received", "applied", "no_op", "refused", "unmapped", "ignored", "orphan")
    table = Table("department", *columns, "stale", "duplicate", "rejected", "watermark")
    for r in rows:
        table.add_row(
            r["department"],
            *(str(r[c]) for c in (*columns, "stale", "duplicate", "rejected")),
            r["watermark"] or "-",
        )
    out.print(table)
    if not rows:
        out.print("no department declares status_poll")
    if any(r["unmapped"] for r in rows):
        err.print("unmapped department status codes: see the case timelines (status_unmapped)")
    if any(r["rejected"] for r in rows):
        err.print("rejected department inputs (nothing applied from them): see the WARNING log")


@app.command()
def reconcile(
    config: ConfigOption = None,
    department: DepartmentOption = None,
    heal: Annotated[
        bool, typer.Option("--heal", help="Repair what is found (default: report only).")
    ] = False,
    as_json: JsonOption = False,
    last: Annotated[bool, typer.Option("--last", help="Show the last stored run.")] = False,
) -> None:
    """Compare hub and department work orders: missing, orphan, drift, stuck."""
    from hub.services.reconcile import Reconciler, last_report

    hub = _hub(config)
    if last:
        report = last_report(hub, department)
        if report is None:
            err.print("no reconcile run stored yet")
            raise typer.Exit(1)
    else:

        async def main():
            try:
                return await Reconciler(hub).run(department, heal=heal)
            finally:
                await hub.aclose()

        report = asyncio.run(main()).as_dict()
    if as_json:
        _print_json(report)
        return
    _print_reconcile(report)


def _print_reconcile(report: dict) -> None:
    mode = "heal" if report["heal"] else "dry run"
    table = Table(
        "department",
        "compared",
        "listed",
        "missing",
        "orphan",
        "drift",
        "stuck",
        "healed",
        title=f"reconcile run {report['run_id']} ({mode}, {report['started_at']})",
    )
    for name, d in report["departments"].items():
        c = d["counts"]
        table.add_row(
            name,
            str(d["compared"]),
            str(d["listed"]),
            *(str(c[k]) for k in ("missing", "orphan", "drift", "stuck")),
            str(sum(d["healed"].values())),
        )
    out.print(table)
    for d in report["departments"].values():
        for f in d["findings"][:20]:
            healed = f" → {f['healed']}" if f["healed"] else ""
            out.print(
                f"  {f['kind']:<8} {f['case_id'] or '-'} {f['external_id'] or '-'}: "
                f"{f['detail']}{healed}",
                markup=False,
            )
        for note in d["notes"]:
            out.print(f"  note: {note}", markup=False)
    out.print(
        "clean"
        if report["clean"]
        else "drift found" + ("" if report["heal"] else " (run with --heal to repair)")
    )


# --------------------------------------------------------------------------- dlq


@dlq_app.command("list")
def dlq_list(
    config: ConfigOption = None,
    department: Annotated[str | None, typer.Option(help="Only this department.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Dead-lettered deliveries with their reason."""
    from hub.store.repository import OutboxState

    hub = _hub(config)
    with hub.uow() as uow:
        items = uow.outbox.list(state=OutboxState.DEAD, department=department)
    rows = [
        {
            "id": i.id,
            "case_id": i.case_id,
            "department": i.department,
            "operation": i.operation,
            "attempts": i.attempts,
            "error_class": i.last_error_class,
            "reason": i.last_error_message,
        }
        for i in items
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "case", "department", "op", "attempts", "class", "reason")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["case_id"],
            r["department"],
            r["operation"],
            str(r["attempts"]),
            r["error_class"] or "",
            r["reason"] or "",
        )
    out.print(table)
    out.print(f"{len(rows)} dead letters")


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Outbox ids to replay.")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    config: ConfigOption = None,
) -> None:
    """Put dead letters back in the queue with a fresh attempt budget."""
    from hub.model import CaseEvent, DeliveryState

    if not ids and not replay_all:
        err.print("give outbox ids or --all")
        raise typer.Exit(2)
    hub = _hub(config)
    with hub.uow() as uow:
        dead = uow.outbox.list(state="dead")
        chosen = [i for i in dead if replay_all or i.id in set(ids or [])]
        count = uow.outbox.replay([i.id for i in chosen])
        for item in chosen:
            if item.operation == "create":
                uow.work_orders.update(
                    item.case_id, item.department, delivery_state=DeliveryState.PENDING
                )
            uow.timeline.append(
                CaseEvent(
                    case_id=item.case_id,
                    kind="replayed",
                    actor="cli",
                    department=item.department,
                    message=f"{item.operation} replayed from the dead-letter queue",
                )
            )
        uow.commit()
    missing = sorted(set(ids or []) - {i.id for i in chosen})
    if missing:
        err.print(f"not dead letters: {', '.join(map(str, missing))}")
    typer.echo(f"replayed {count}")
    if missing:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- case


@case_app.command("show")
def case_show(
    case_id: Annotated[str, typer.Argument(help="Hub id of the case.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A case with its work orders, pending deliveries and full timeline (no PII)."""
    hub = _hub(config)
    with hub.uow() as uow:
        case = uow.cases.get(case_id)
        if case is None:
            err.print(f"no case {case_id}")
            raise typer.Exit(1)
        orders = uow.work_orders.for_case(case_id)
        deliveries = uow.outbox.for_case(case_id)
        timeline = uow.timeline.for_case(case_id)
    data = {
        "case": case.redacted(),
        "work_orders": [o.model_dump(mode="json") for o in orders],
        "deliveries": [
            {
                "id": d.id,
                "department": d.department,
                "operation": d.operation,
                "state": d.state,
                "attempts": d.attempts,
                "next_attempt_at": d.next_attempt_at,
                "error_class": d.last_error_class,
                "error": d.last_error_message,
            }
            for d in deliveries
        ],
        "timeline": [e.model_dump(mode="json") for e in timeline],
    }
    if as_json:
        _print_json(data)
        return
    out.print(
        f"[bold]{case.hub_id}[/bold]  {case.service_code}  status={case.status.value}"
        f"  department={case.department}  version={case.version}"
    )
    for order in orders:
        out.print(
            f"  work order @{order.department}: {order.external_id or '-'}"
            f" delivery={order.delivery_state.value} raw={order.raw_status or '-'}",
            markup=False,
        )
    table = Table("at", "kind", "level", "department", "message")
    for event in timeline:
        table.add_row(
            event.at.isoformat(timespec="seconds"),
            event.kind,
            event.level.value,
            event.department or "",
            event.message,
        )
    out.print(table)


# --------------------------------------------------------------------------- departments


@departments_app.command("status")
def departments_status(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    watch: Annotated[bool, typer.Option("--watch", help="Live view (as `hub top`).")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between --watch frames.")] = 2.0,
) -> None:
    """Per department: paused/open, circuit, queue depth, oldest due, dead letters, and
    the inputs its adapter rejected in the last 24 hours."""
    from hub.model import utcnow
    from hub.store.repository import RejectedSummary

    hub = _hub(config)
    if watch:
        from hub.observability.top import run_top

        run_top(hub, interval=interval, console=out)
        return
    now = utcnow()
    with hub.uow() as uow:
        stats = uow.outbox.stats(now)
        healths = uow.departments.all()
        rejected = uow.rejected.summary(now)
    names = sorted(set(hub.config.departments) | set(stats) | set(healths))
    rows = []
    for name in names:
        s, h = stats.get(name), healths.get(name)
        rej = rejected.get(name) or RejectedSummary(name, 0, 0, None, None, None)
        configured = name in hub.config.enabled_departments()
        rows.append(
            {
                "department": name,
                "state": "paused"
                if h and h.paused
                else ("open" if configured else "not configured"),
                "circuit": h.circuit if h else "closed",
                "pause_reason": h.pause_reason if h else None,
                "queue_depth": s.pending if s else 0,
                "due_now": s.due if s else 0,
                "held": s.held if s else 0,
                "dead_letters": s.dead if s else 0,
                "oldest_due": s.oldest_due.isoformat() if s and s.oldest_due else None,
                "oldest_due_age_seconds": round((now - s.oldest_due).total_seconds(), 1)
                if s and s.oldest_due and s.oldest_due <= now
                else 0,
                # Inputs its adapter refused (quarantined files, unreadable records).
                "rejected_24h": rej.last_24h,
                "rejected_total": rej.total,
                "last_rejected_at": rej.last_received_at.isoformat()
                if rej.last_received_at
                else None,
                "last_rejected_reason": rej.last_reason,
            }
        )
    if as_json:
        _print_json(rows)
        return
    table = Table(
        "department", "state", "circuit", "queue", "due", "held", "dead", "oldest due",
        "rejected 24h",
    )  # fmt: skip
    for r in rows:
        table.add_row(
            r["department"],
            r["state"],
            r["circuit"],
            str(r["queue_depth"]),
            str(r["due_now"]),
            str(r["held"]),
            str(r["dead_letters"]),
            r["oldest_due"] or "-",
            str(r["rejected_24h"]),
        )
    out.print(table)
    if not rows:
        out.print("no departments configured yet")


@departments_app.command("rejected")
def departments_rejected(
    department: Annotated[str, typer.Argument(help="Department whose rejected inputs to list.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="How many, newest first.")] = 20,
) -> None:
    """Inputs the department's adapter refused (quarantined files, unreadable records),
    newest first: name, class, reason and digest, never the content."""
    hub = _hub(config)
    with hub.uow() as uow:
        entries = uow.rejected.recent(department, limit)
    if not entries and department not in hub.config.departments:
        known = ", ".join(sorted(hub.config.departments)) or "none"
        err.print(f"unknown department {department!r} (configured: {known})", markup=False)
        raise typer.Exit(2)
    rows = [
        {
            "id": e.id,
            "department": e.department,
            "kind": e.kind,
            "source": e.source,
            "reason": e.reason,
            "digest": e.digest,
            "received_at": e.received_at.isoformat(),
        }
        for e in entries
    ]
    if as_json:
        _print_json(rows)
        return
    from rich.text import Text

    table = Table("received", "kind", "source", "reason", "digest")
    for r in rows:
        digest = r["digest"][:12] if r["digest"] else "-"
        # Text, not markup: a name or reason may hold brackets ("[email]" once redacted).
        source, reason = Text(r["source"]), Text(r["reason"])
        table.add_row(r["received_at"], r["kind"], source, reason, digest)
    out.print(table)
    if not rows:
        out.print(f"no rejected inputs recorded for {department}")


@app.command()
def top(
    config: ConfigOption = None,
    interval: Annotated[float, typer.Option(help="Seconds between frames.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
) -> None:
    """Live view of departments: state, circuit, queue, due, held, dead, oldest due,
    attempts/s, sync lag. Ctrl-C quits."""
    from hub.observability.top import run_top

    run_top(_hub(config), interval=interval, once=once, console=out)


@departments_app.command("resume")
def departments_resume(
    department: Annotated[str, typer.Argument(help="Department to resume.")],
    config: ConfigOption = None,
) -> None:
    """Lift a pause (for example after fixing credentials) and close its circuit."""
    from hub.services.dispatch import resume_department

    resume_department(_hub(config), department)
    typer.echo(f"{department} resumed")


# --------------------------------------------------------------------------- simulators

HostOption = Annotated[str, typer.Option(help="Interface (loopback by default).")]
FaultsOption = Annotated[
    str, typer.Option(help="Fault profile: none, flaky, outage, slow, or k=v,…")
]


@simulate_app.command("publicworks")
def simulate_publicworks(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8081,
    host: HostOption = "127.0.0.1",
    faults: FaultsOption = "none",
) -> None:
    """A Cityworks-like public-works system with fault injection and /__sim__/ endpoints."""
    from hub.testing.simulators.publicworks import main

    typer.echo(f"public-works simulator on http://{host}:{port} (faults: {faults})")
    main(port=port, host=host, faults=faults)


@simulate_app.command("codeenforcement")
def simulate_codeenforcement(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8082,
    host: HostOption = "127.0.0.1",
    faults: FaultsOption = "none",
) -> None:
    """An Accela-like code-enforcement case service over SOAP (WSDL at ?wsdl)."""
    from hub.testing.simulators.codeenforcement import SERVICE_PATH, main

    typer.echo(f"code-enforcement SOAP simulator on http://{host}:{port}{SERVICE_PATH}?wsdl")
    main(port=port, host=host, faults=faults)


@simulate_app.command("sanitation")
def simulate_sanitation(
    directory: Annotated[Path, typer.Option("--dir", help="The drop directory.")],
    port: Annotated[int, typer.Option(help="Control port (/__sim__/) on 127.0.0.1.")] = 8083,
    sftp_port: Annotated[
        int | None, typer.Option(help="Also serve the drop over SFTP on this port.")
    ] = None,
    faults: Annotated[
        str, typer.Option(help="Fault profile: none, flaky, or k=v,… (late_files, bad_files…)")
    ] = "none",
) -> None:
    """A hauling contractor on a file drop: takes batches, writes ACK and status files."""
    from hub.testing.simulators.sanitation import main

    typer.echo(f"sanitation contractor on {directory} (control http://127.0.0.1:{port})")
    main(directory, port=port, faults=faults, sftp_port=sftp_port)


@simulate_app.command("gis")
def simulate_gis(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8084,
    host: HostOption = "127.0.0.1",
    faults: FaultsOption = "none",
) -> None:
    """An ArcGIS REST-like GIS of a generated city (geocoder, wards, districts, assets)."""
    from hub.testing.simulators.gis import main

    typer.echo(f"GIS simulator on http://{host}:{port} (faults: {faults})")
    main(port=port, host=host, faults=faults)


@simulate_app.command("payments")
def simulate_payments(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8085,
    host: HostOption = "127.0.0.1",
    faults: Annotated[
        str,
        typer.Option(
            help="Fault profile plus payment knobs: decline_rate, action_rate,"
            " duplicate_webhook_rate, lost_webhook_rate, webhook_url, auto_succeed (k=v,…)"
        ),
    ] = "none",
) -> None:
    """A Stripe-like PaymentIntents service that sends signed webhooks."""
    from hub.testing.simulators.payments import main

    typer.echo(f"payments simulator on http://{host}:{port} (faults: {faults})")
    main(port=port, host=host, faults=faults)


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    cases: Annotated[int, typer.Option("--cases", "-n", help="How many cases to feed.")] = 200,
    faults: Annotated[str, typer.Option(help="Simulator fault profile.")] = "flaky",
    from_file: Annotated[
        Path | None,
        typer.Option("--from", help="A CRM export to replay instead of generated cases."),
    ] = None,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where the demo database goes (default: temp).")
    ] = None,
    as_json: JsonOption = False,
    seed: Annotated[int, typer.Option(help="Seed for generated cases and faults.")] = 7,
) -> None:
    """Run everything in one process on SQLite: simulators, intake, worker; print a report."""
    from hub.demo import run_demo

    summary = run_demo(
        cases=cases,
        faults=faults,
        from_file=from_file,
        directory=directory,
        seed=seed,
        progress=not as_json and sys.stderr.isatty(),
        console=out,
    )
    if as_json:
        typer.echo(json.dumps(summary, default=str))


# --------------------------------------------------------------------------- serve


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    with_worker: Annotated[
        bool, typer.Option("--with-worker", help="Also deliver the outbox in this process.")
    ] = False,
    access_log: Annotated[bool, typer.Option(help="Log every request (uvicorn).")] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes sharing the port (--with-worker runs the "
            "outbox worker in the first one).",
        ),
    ] = 1,
    config: ConfigOption = None,
) -> None:
    """Run the HTTP API (Open311 at /open311/v2/, /docs, /health, /ready) with uvicorn."""
    import socket

    _configure_logging()
    if workers == 1:
        _serve_one(config, host, port, None, with_worker=with_worker, access_log=access_log)
        return
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    _load_config_or_exit(config)  # a bad config fails here, once, not in every child
    children = []
    for index in range(workers):
        pid = os.fork()  # before any engine, thread or loop exists in this process
        if pid == 0:
            code = 0
            try:
                _serve_one(
                    config,
                    host,
                    port,
                    sock,
                    with_worker=with_worker and index == 0,
                    access_log=access_log,
                )
            except BaseException:
                code = 1
                traceback.print_exc()
            finally:
                os._exit(code)
        children.append(pid)
    sock.close()
    _supervise(children)


def _load_config_or_exit(config: Path | None) -> None:
    try:
        load_config(config)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False)
        raise typer.Exit(2) from exc


def _supervise(children: list[int]) -> None:
    """Forward SIGINT/SIGTERM to the server processes and wait for all of them."""

    def forward(sig: int, _frame) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    failed = False
    for pid in children:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        failed |= os.waitstatus_to_exitcode(status) != 0
    if failed:
        raise typer.Exit(1)


def _serve_one(
    config: Path | None, host: str, port: int, sock, *, with_worker: bool, access_log: bool
) -> None:
    """One uvicorn server (uvloop + httptools when installed) on `sock` or host:port."""
    import uvicorn

    from hub.api.app import create_app

    hub = _hub(config)
    server = uvicorn.Server(  # log_config=None: uvicorn's records go through our handler
        uvicorn.Config(
            create_app(hub), host=host, port=port, access_log=access_log, log_config=None
        )
    )
    # The long-lived start-up objects (plugins, mappings, FastAPI, SQLAlchemy) move out of
    # the collector's sight: a full collection otherwise walks them all, a 100 ms pause
    # for every request in flight.
    gc.collect()
    gc.freeze()

    async def main() -> None:
        stop = asyncio.Event()
        # uvicorn restores these after its graceful shutdown and re-raises the signal:
        # with Python's defaults that would kill us before the worker stops cleanly.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        worker_task = None
        if with_worker:  # same event loop: the worker's calls interleave with requests
            from hub.services.dispatch import Dispatcher

            _warn_of_department_problems(hub)
            worker_task = asyncio.create_task(Dispatcher(hub).run(stop=stop))
        try:  # returns on SIGINT/SIGTERM (uvicorn's handlers)
            await server.serve(sockets=[sock] if sock is not None else None)
        finally:
            stop.set()
            if worker_task is not None:
                stats = await worker_task
                err.print(f"worker stopped: {json.dumps(stats.as_dict())}", markup=False)
            await hub.aclose()
            hub.dispose()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


def _loop_factory():
    """uvloop's event loop when it is installed (uvicorn[standard] brings it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# --------------------------------------------------------------------------- apikey


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Argument(help="Who the key is for, e.g. the CRM's name.")],
    config: ConfigOption = None,
) -> None:
    """Create a key and print it once: only its SHA-256 digest is stored."""
    from hub.services.apikeys import ApiKeyError, ApiKeyService

    try:
        _, key = ApiKeyService(_hub(config).engine).create(name)
    except ApiKeyError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(1) from exc
    err.print(f"api key {name!r} created; it is shown only now:", markup=False)
    typer.echo(key)


@apikey_app.command("list")
def apikey_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Keys with their prefix, creation, last use and revocation (never the key)."""
    from hub.services.apikeys import ApiKeyService

    keys = [k.as_dict() for k in ApiKeyService(_hub(config).engine).list()]
    if as_json:
        _print_json(keys)
        return
    table = Table("name", "prefix", "scopes", "created", "last used", "revoked")
    for k in keys:
        table.add_row(
            str(k["name"]),
            f"{k['prefix']}…",
            str(k["scopes"]),
            str(k["created_at"]),
            str(k["last_used_at"] or "-"),
            str(k["revoked_at"] or "-"),
        )
    out.print(table)


@apikey_app.command("revoke")
def apikey_revoke(
    name: Annotated[str, typer.Argument(help="Name of the key to revoke.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key: writes with it are refused (403) from now on."""
    from hub.services.apikeys import ApiKeyError, ApiKeyService

    try:
        key = ApiKeyService(_hub(config).engine).revoke(name)
    except ApiKeyError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(1) from exc
    typer.echo(f"revoked {key.name} ({key.prefix}…) at {key.revoked_at}")


# --------------------------------------------------------------------------- import


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="CRM export file.", exists=True, dir_okay=False)],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="nyc-csv | nyc-socrata-json | boston-csv | open311-json | open311-xml "
            "(default: detected).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check only; write nothing.")] = False,
    limit: Annotated[int | None, typer.Option(help="Read at most N records.", min=1)] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Load cases from a CRM export; re-running imports nothing twice."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from hub.services.importer import ImportProblem, ImportService

    service = ImportService(_hub(config))
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=as_json, transient=True) as bar:
        task = bar.add_task(f"importing {file.name}", total=limit)
        try:
            summary = service.run(
                file,
                format=format,
                dry_run=dry_run,
                limit=limit,
                progress=lambda n: bar.advance(task, n),
            )
        except ImportProblem as exc:
            err.print(str(exc), markup=False)
            raise typer.Exit(2) from exc
    if as_json:
        _print_json(summary.as_dict())
        return
    verb = "would import" if dry_run else "imported"
    out.print(
        f"{file.name} ({summary.format}): read {summary.read}, {verb} {summary.imported}"
        f" ({summary.closed_not_dispatched} closed at the source: recorded, not dispatched),"
        f" skipped {summary.duplicates} duplicates, rejected {summary.rejected}",
        markup=False,
    )
    if summary.reasons:
        table = Table("rejected because", "rows")
        for reason, count in summary.reasons.most_common():
            table.add_row(reason, str(count))
        out.print(table)
        for row in summary.rejected_rows[:5]:
            out.print(f"  line {row.line} ({row.source_id or 'no id'}): {row.reason}", markup=False)


# --------------------------------------------------------------------------- soak


@app.command()
def soak(
    cases: Annotated[int, typer.Option("--cases", "-n", help="Cases to feed.")] = 10_000,
    seconds: Annotated[
        float | None, typer.Option(help="Bound on the chaos phase (then a drain grace).")
    ] = None,
    postgres: Annotated[
        str | None, typer.Option(metavar="URL", help="PostgreSQL (2 workers; else SQLite, 1).")
    ] = None,
    kill_every: Annotated[float, typer.Option(help="SIGKILL a worker every S s.")] = 20.0,
    feed_seconds: Annotated[
        float | None, typer.Option(help="Spread intake over S s (default: as fast as it goes).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option(help="Also write the JSON report.")] = None,
) -> None:
    """Chaos soak: faults at 20%, worker kills, dropped DB connections, a restarted file
    drop; then prove exactly-once, closures, a clean reconcile and no PII in the logs."""
    from hub.testing.soak import SoakOptions, run_soak

    report = run_soak(
        SoakOptions(
            cases=cases,
            seconds=seconds,
            postgres=postgres,
            kill_every=kill_every,
            feed_seconds=feed_seconds,
        )
    )
    typer.echo(report.table())
    document = json.dumps(report.as_dict(), default=str)
    if json_out:
        json_out.write_text(document + "\n")
    typer.echo(document)
    raise typer.Exit(0 if report.ok else 1)


def _missing_schema(error: Exception) -> bool:
    """SQLite's "no such table" or PostgreSQL's undefined table/column: not migrated."""
    text = str(getattr(error, "orig", error)).lower()
    return "no such table" in text or "does not exist" in text or "no such column" in text


def main() -> None:
    """The `hub` command: the Typer app, plus one plain sentence instead of a traceback when
    the database has no hub schema (or an older one) yet."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from hub.mapping import MappingError

    try:
        app()
    except MappingError as error:  # loaded lazily, so it can surface in any command
        for problem in error.problems:
            err.print(str(problem), markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (OperationalError, ProgrammingError) as error:
        if not _missing_schema(error):
            raise
        err.print(
            "the database has no hub schema yet, or an older one: run `hub db upgrade` "
            "(it reads HUB_DATABASE_URL, like every command)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
