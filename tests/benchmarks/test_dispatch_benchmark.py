"""The dispatch benchmark runs end to end (it asserts the script works, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "dispatch.py"
RATES = ("aiohttp_rps", "httpx_rps", "httpx_aiohttp_rps", "adapter_rps", "hub_cases_per_s")


def test_quick_run_reports_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "dispatch.json"
    argv = [sys.executable, str(SCRIPT), "--quick", "--cases", "24", "--cases-slow", "4"]
    done = subprocess.run(
        [*argv, "--json-out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
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
