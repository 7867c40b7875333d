"""The status-sync benchmarks run end to end in quick mode (they assert the scripts work)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def run(script: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_reconcile_benchmark_finds_every_seeded_drift() -> None:
    result = run("reconcile.py")
    assert result["all_found_no_false_positives"], result
    assert result["compared"] == result["work_orders"]


def test_status_lag_benchmark_reports_both_paths() -> None:
    result = run("status_lag.py")
    assert result["webhook"]["samples"] == 10 and result["polling"]["samples"] == 4
    assert 0 < result["webhook"]["p50_ms"] <= result["webhook"]["p99_ms"]
