"""A/B the hub's dispatch: this working tree against a git revision, in alternating runs.

On this 2-core machine class a single run of a cell swings by a quarter, the bare loops'
as much as the hub's, so two versions compared one run each (or one matrix each, an hour
apart) say little. This script runs only the hub cell of ``benchmarks/dispatch.py`` (a
fresh simulator process and store each run; intake, then the Dispatcher until the outbox
is empty) from both checkouts in turn, new and base alternating and each pair's order
swapped, and reports per side the median rate, the hub process's CPU per case, the share
of call slots in use and the turn time per case, with how many pairs each side won.

    .venv/bin/python benchmarks/compare.py --base HEAD~1                 # 0 ms / 32, 10 pairs
    .venv/bin/python benchmarks/compare.py --base main --cell 50,256 --cases 5000 --runs 8

The base is checked out into a temporary git worktree, removed afterwards; "new" is this
working tree, uncommitted changes included. Both sides run this file's child code against
their own ``hub`` and ``benchmarks`` packages, so the base needs the ``hub_config``,
``intake`` and ``run_hub`` of ``benchmarks/dispatch.py`` as they are today (checked back to
4c29a39, 2026-12-07). Figures a base does not report (CPU per case before 08444bf, slots
and turns before this script) are shown as "-".

Prints a table, then the JSON document as the last line (``--json-out FILE`` saves it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Nothing from `hub` or `benchmarks` is imported at module level, not even the shared
# output helpers: a child imports them from its own checkout, and a module imported here
# first would be the new tree's in the base's runs too.
ROOT = Path(__file__).resolve().parents[1]
SIDES = ("base", "new")
FIGURES = ("rate", "cpu_ms", "slots_busy", "turn_ms")  # medians per side


# --------------------------------------------------------------------------- one run (child)


def child(latency_ms: int, concurrency: int, cases: int) -> dict[str, Any]:
    """One hub cell from the checkout in the current directory (imported from there)."""
    sys.path.insert(0, os.getcwd())
    from benchmarks import dispatch as d
    from benchmarks._common import Store, sim_admin, simulator_process
    from hub.mapping import load_mappings
    from hub.services.runtime import Hub

    os.environ[d.SQLITE_SYNCHRONOUS_ENV] = "FULL"  # the hub's default
    os.environ.setdefault(d.PASSWORD_ENV, d.DEFAULT_PASSWORD)
    mappings = load_mappings(d.REPO_MAPPINGS)
    with tempfile.TemporaryDirectory(prefix="hub-compare-") as tmp:
        directory = Path(tmp)
        with simulator_process(d.DEPARTMENT, directory / "simulator.log") as url:
            sim_admin(url, "faults", {"latency_ms": latency_ms})
            database = Store(directory, None).fresh("run")
            hub = Hub(d.hub_config(url, concurrency), database=database, mappings=mappings)
            try:
                made, intake_seconds = d.intake(hub, mappings, cases, seed=concurrency)
                run = d.run_hub(hub, url, made, intake_seconds)
            finally:
                hub.dispose()
    cpu_seconds = getattr(run, "cpu_seconds", None)  # from 2026-12-07 on
    turn_seconds = run.stats.get("turn_seconds")  # from 2026-12-08 on
    return {
        "rate": cases / run.dispatch_seconds,
        "cpu_ms": None if cpu_seconds is None else cpu_seconds / cases * 1000,
        "slots_busy": run.stats.get("slots_busy"),
        "turn_ms": None if turn_seconds is None else turn_seconds / cases * 1000,
        "delivered": run.delivered,
        "duplicates": run.duplicates,
    }


# --------------------------------------------------------------------------- the comparison


class CompareError(Exception):
    """The comparison cannot run (a revision git cannot check out, a run that failed)."""


@contextlib.contextmanager
def base_checkout(revision: str) -> Iterator[tuple[Path, str]]:
    """The revision in a temporary worktree, with its full commit id; removed on exit."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", what=revision)
    with tempfile.TemporaryDirectory(prefix="hub-compare-base-") as tmp:
        path = Path(tmp) / "base"
        _git("worktree", "add", "--detach", str(path), commit, what=revision)
        try:
            yield path, commit
        finally:
            _git("worktree", "remove", "--force", str(path), what=revision)


def _git(*argv: str, what: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True)
    if done.returncode != 0:
        detail = done.stderr.strip() or f"git {argv[0]} failed"
        raise CompareError(f"cannot use revision {what!r}: {detail}")
    return done.stdout.strip()


def run_side(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    latency_ms, concurrency = args.cell
    argv = [sys.executable, str(Path(__file__).resolve()), "--child"]
    argv += ["--cell", f"{latency_ms},{concurrency}", "--cases", str(args.cases)]
    done = subprocess.run(argv, cwd=directory, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise CompareError(f"a run in {directory} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternate(sides: dict[str, Path], args: argparse.Namespace) -> dict[str, list[dict]]:
    """`args.runs` pairs; the side that goes first swaps each pair (the machine drifts)."""
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for pair in range(args.runs):
        order = ("new", "base") if pair % 2 == 0 else ("base", "new")
        for side in order:
            runs[side].append(run_side(sides[side], args))
        print(
            f"# pair {pair + 1}/{args.runs}: new {runs['new'][-1]['rate']:.0f},"
            f" base {runs['base'][-1]['rate']:.0f} cases/s",
            flush=True,
        )
    return runs


def summarise(runs: list[dict], cases: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"runs": len(runs)}
    for figure in FIGURES:
        values = [run[figure] for run in runs if run.get(figure) is not None]
        summary[figure] = statistics.median(values) if values else None
    rates = [run["rate"] for run in runs]
    summary["rates"] = rates
    summary["delivered_every_case"] = all(run["delivered"] == cases for run in runs)
    summary["duplicates"] = sum(run["duplicates"] for run in runs)
    return summary


def compare(runs: dict[str, list[dict]], cases: int) -> dict[str, Any]:
    sides = {side: summarise(runs[side], cases) for side in SIDES}
    base, new = sides["base"], sides["new"]
    pairs = list(zip(runs["new"], runs["base"], strict=True))
    return {
        "sides": sides,
        "new_won_pairs": sum(1 for n, b in pairs if n["rate"] > b["rate"]),
        "rate_change_pct": _change(new["rate"], base["rate"]),
        "cpu_change_pct": _change(new["cpu_ms"], base["cpu_ms"]),
    }


def _change(new: float | None, base: float | None) -> float | None:
    if new is None or not base:
        return None
    return (new / base - 1) * 100


# --------------------------------------------------------------------------- output


def table(doc: dict[str, Any]) -> str:
    titles = ["side", "runs", "median/s", "min-max/s", "cpu ms", "slots", "turn ms", "dups"]
    rows = []
    for side in SIDES:
        s = doc["sides"][side]
        rows.append(
            [
                side,
                str(s["runs"]),
                f"{s['rate']:.0f}",
                f"{min(s['rates']):.0f}-{max(s['rates']):.0f}",
                _cell(s["cpu_ms"], ".3f"),
                _cell(s["slots_busy"], ".2f"),
                _cell(s["turn_ms"], ".3f"),
                str(s["duplicates"]),
            ]
        )
    widths = [max(len(v) for v in column) for column in zip(titles, *rows, strict=True)]
    lines = [" ".join(t.rjust(w) for t, w in zip(titles, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    lines += [" ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    latency_ms, concurrency = doc["cell"]["latency_ms"], doc["cell"]["concurrency"]
    lines.append(
        f"new vs base at {latency_ms} ms / {concurrency}: rate"
        f" {_percent(doc['rate_change_pct'])}, CPU per case"
        f" {_percent(doc['cpu_change_pct'])} (medians); new won"
        f" {doc['new_won_pairs']} of {doc['runs']} pairs"
    )
    return "\n".join(lines)


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(change: float | None) -> str:
    return "not reported by both" if change is None else f"{change:+.1f} %"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# --------------------------------------------------------------------------- main


def parse_cell(text: str) -> tuple[int, int]:
    try:
        latency_ms, concurrency = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected LATENCY_MS,CONCURRENCY, e.g. 0,32") from None
    if latency_ms < 0 or concurrency < 1:
        raise argparse.ArgumentTypeError("latency must be >= 0 and concurrency >= 1")
    return latency_ms, concurrency


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="git revision to compare this working tree against")
    parser.add_argument("--cell", type=parse_cell, default=(0, 32), help="LATENCY_MS,CONCURRENCY")
    parser.add_argument("--cases", type=int, default=4000, help="cases per run")
    parser.add_argument("--runs", type=int, default=10, help="runs per side (pairs)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child and not args.base:
        parser.error("--base REVISION is required")
    if args.cases < 1 or args.runs < 1:
        parser.error("--cases and --runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.cell, args.cases)))
        return 0
    started = time.perf_counter()
    head = _git("rev-parse", "HEAD", what="HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", what="HEAD"))
    try:
        with base_checkout(args.base) as (base_dir, base_commit):
            runs = alternate({"base": base_dir, "new": ROOT}, args)
    except CompareError as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    doc = {
        "benchmark": "compare",
        "cell": {"latency_ms": args.cell[0], "concurrency": args.cell[1]},
        "cases": args.cases,
        "runs": args.runs,
        "base": {"revision": args.base, "commit": base_commit},
        "new": {"commit": head, "uncommitted_changes": dirty},
        "machine": {"cpus": os.cpu_count()},
        **compare(runs, args.cases),
    }
    doc["seconds"] = time.perf_counter() - started
    doc = _rounded(doc)
    print(table(doc))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
