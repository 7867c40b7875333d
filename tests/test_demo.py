"""`hub demo`, as the README's first command runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.demo import run_demo
from hub.testing.generator import find_realworld_dir

pytestmark = pytest.mark.timeout(180)


def test_demo_cli_prints_a_json_summary_last(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "demo",
            "--cases",
            "40",
            "--json",
            "--dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    publicworks = summary["departments"]["publicworks"]
    assert summary["cases"] == 40
    assert publicworks["duplicates"] == 0
    assert publicworks["delivered"] + publicworks["dead_lettered"] == publicworks["received"] > 0
    assert "publicworks" in result.stdout and "duplicates" in result.stdout  # the table


def test_demo_replays_a_real_crm_export(tmp_path: Path) -> None:
    export = find_realworld_dir() / "311_records" / "nyc" / "nyc311_2016_brooklyn_cb06.csv"
    summary = run_demo(
        cases=60, faults="flaky", from_file=export, directory=tmp_path, progress=False
    )
    assert summary["cases"] + summary["skipped_rows"] <= 117
    assert summary["cases"] > 0
    for report in summary["departments"].values():
        assert report["duplicates"] in (0, None)
