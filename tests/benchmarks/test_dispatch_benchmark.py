"""The dispatch benchmark runs end to end (it asserts the script works, not speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.helpers import REPO, run_script
from tests.conftest import _require_postgres, postgres_base_url

SCRIPT = REPO / "benchmarks" / "dispatch.py"
RATES = ("aiohttp_rps", "httpx_rps", "httpx_aiohttp_rps", "adapter_rps", "hub_cases_per_s")


def test_quick_run_reports_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "dispatch.json"
    argv = ["--quick", "--cases", "24", "--cases-slow", "4", "--json-out", str(out)]
    done, printed = run_script(SCRIPT, *argv, timeout=120)
    assert printed == json.loads(out.read_text())
    assert "hub/aio" in done.stdout  # the table came first
    cells = {(c["latency_ms"], c["concurrency"]): c for c in printed["cells"]}
    assert set(cells) == {(lat, conc) for lat in (0, 50) for conc in (1, 32, 256)}
    for (latency, concurrency), cell in cells.items():
        assert cell["n"] == (4 if latency and concurrency == 1 else 24)
        assert cell["duplicates"] == 0
        assert cell["delivered"] == cell["create_calls"] == cell["n"]
        assert all(cell[rate] > 0 for rate in RATES), cell
        assert cell["ratio_hub_vs_aiohttp"] > 0
        # a case costs the hub at least its HTTP call (tens of µs) and at most a second
        assert 0.01 < cell["hub_cpu_ms_per_case"] < 1000
        assert 0 < cell["hub_slots_busy"] <= 1
        assert 0 < cell["hub_turn_cpu_ms_per_case"] <= cell["hub_turn_ms_per_case"] + 0.01


def test_repeats_report_medians_and_every_runs_ratio() -> None:
    argv = ["--quick", "--cases", "12", "--latencies", "0", "--concurrency", "4", "--repeats", "2"]
    done, printed = run_script(SCRIPT, *argv, timeout=120)
    [cell] = printed["cells"]
    assert printed["repeats"] == 2 and len(cell["ratio_hub_vs_aiohttp_runs"]) == 2
    assert cell["delivered"] == cell["n"] == 12 and cell["duplicates"] == 0
    assert "hub/aio per run" in done.stdout


def test_combine_takes_the_median_of_per_run_ratios_and_the_worst_counts() -> None:
    from benchmarks.dispatch import Cell, combine

    runs = []
    for aiohttp, hub, delivered, duplicates in [
        (1000, 800, 10, 0),
        (3000, 900, 9, 1),
        (2000, 1000, 10, 0),
    ]:
        run = Cell(latency_ms=0, concurrency=32, n=10, aiohttp_rps=aiohttp, hub_cases_per_s=hub)
        run.ratio_hub_vs_aiohttp = hub / aiohttp
        run.delivered, run.duplicates, run.create_calls = delivered, duplicates, 10 + duplicates
        run.client_errors = {"httpx": 1}
        runs.append(run)
    cell = combine(runs)
    assert (cell.aiohttp_rps, cell.hub_cases_per_s) == (2000, 900)
    assert cell.ratio_hub_vs_aiohttp == 0.5  # per-run ratios 0.8, 0.3, 0.5; medians give 0.45
    assert cell.ratio_hub_vs_aiohttp_runs == [0.8, 0.3, 0.5]
    assert (cell.delivered, cell.duplicates, cell.create_calls) == (9, 1, 11)
    assert cell.client_errors == {"httpx": 3}


SOAP_SCRIPT = REPO / "benchmarks" / "soap_dispatch.py"
SOAP_CELL_KEYS = {
    "latency_ms",
    "concurrency",
    "cases",
    "adapter_per_s",
    "hub_per_s",
    "hub_over_adapter",
    "delivered",
    "create_calls",
    "duplicates",
}


def test_soap_quick_run_keeps_its_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "soap.json"
    done, printed = run_script(SOAP_SCRIPT, "--quick", "--json-out", str(out))
    assert printed == json.loads(out.read_text())
    head = done.stdout.splitlines()[0].split()
    assert head == ["latency", "conc", "cases", "adapter/s", "hub/s", "hub/adapter"]
    assert set(printed) == {"benchmark", "department", "store", "machine", "seconds", "cells"}
    assert [(c["latency_ms"], c["concurrency"]) for c in printed["cells"]] == [(0, 1), (0, 16)]
    for cell in printed["cells"]:
        assert set(cell) == SOAP_CELL_KEYS
        assert cell["delivered"] == cell["create_calls"] == cell["cases"] == 60  # --quick
        assert cell["duplicates"] == 0 and cell["adapter_per_s"] > 0 and cell["hub_per_s"] > 0


def test_soap_per_call_reports_cpu_per_operation() -> None:
    argv = ("--per-call", "--rounds", "1", "--poll-records", "6", "--polls", "2")
    done, printed = run_script(SOAP_SCRIPT, *argv)
    assert printed["benchmark"] == "soap_dispatch_per_call"
    assert "cpu ms/call" in done.stdout.splitlines()[0]
    costs = {c["operation"]: c for c in printed["operations"]}
    assert list(costs) == ["create", "find_by_reference", "get_status", "add_note", "poll_changes"]
    assert all(c["cpu_ms_per_call"] > 0 and c["wall_ms_per_call"] > 0 for c in costs.values())
    assert costs["create"]["calls"] == 6 and costs["poll_changes"]["calls"] == 2
    assert costs["poll_changes"]["records_per_call"] == 6  # the round's cases, every one


QUEUE_STATS_SCRIPT = REPO / "benchmarks" / "queue_stats.py"


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_queue_stats_benchmark_lists_every_department(store: str) -> None:
    argv = ["--rows", "4000", "--open-every", "10", "--repeats", "2"]
    if store == "postgres":
        _require_postgres(postgres_base_url())
        argv += ["--postgres", postgres_base_url()]
    done, doc = run_script(QUEUE_STATS_SCRIPT, *argv)
    assert "stats median" in done.stdout  # the table came first
    assert doc["store"] == ("postgresql" if store == "postgres" else "sqlite")
    # 3,000 rows in the three working departments, one in ten of each pending (n // 4 % 10)
    assert doc["open_rows"] == 300
    assert doc["departments"]["payments"] == {"pending": 0, "dead": 0}  # all done, listed
    assert {d["pending"] for n, d in doc["departments"].items() if n != "payments"} == {100}
    assert doc["stats_ms_best"] > 0 and doc["metrics_snapshot_ms_best"] > 0
