"""The intake benchmark runs end to end (it asserts the script works, not speed)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.benchmarks.helpers import REPO, run_script

SCRIPT = REPO / "benchmarks" / "intake.py"


def test_quick_run_prints_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "intake.json"
    done, printed = run_script(SCRIPT, "--quick", "--json-out", str(out), timeout=60)
    assert printed == json.loads(out.read_text())
    assert "req/s" in done.stdout  # the table came first
    assert printed["target"] == {"rps": 1500, "p99_ms": 50.0}
    [cell] = printed["cells"]
    assert cell["store"] == "sqlite/FULL" and cell["errors"] == 0
    assert cell["ok"] == cell["n"] == cell["cases_in_store"]  # nothing lost, nothing doubled
    assert cell["rps"] > 0 and 0 < cell["p50_ms"] <= cell["p99_ms"] <= cell["max_ms"]


def test_quick_run_with_two_server_processes(tmp_path: Path) -> None:
    """`hub serve --workers 2` on SQLite: two processes share the port and the one writer."""
    _, printed = run_script(SCRIPT, "--quick", "--workers", "2", timeout=60)
    [cell] = printed["cells"]
    assert cell["workers"] == 2 and cell["errors"] == 0
    assert cell["ok"] == cell["n"] == cell["cases_in_store"]  # nothing lost, nothing doubled
    assert cell["client_cpu_pct"] > 0 and cell["server_cpu_pct"] > 0
