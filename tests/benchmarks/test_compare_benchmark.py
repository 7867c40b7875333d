"""benchmarks/compare.py runs the hub cell from two checkouts (it asserts the script
works and reports what it measured, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.compare import compare
from tests.benchmarks.helpers import REPO, run_script

SCRIPT = REPO / "benchmarks" / "compare.py"


def worktrees() -> list[str]:
    listed = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in listed.stdout.splitlines() if line.startswith("worktree ")]


def test_both_sides_run_in_turn_and_the_base_worktree_is_removed(tmp_path: Path) -> None:
    before = worktrees()
    out = tmp_path / "compare.json"
    argv = ["--base", "HEAD", "--cell", "0,4", "--cases", "40", "--runs", "2"]
    done, doc = run_script(SCRIPT, *argv, "--json-out", str(out), timeout=240)
    assert doc == json.loads(out.read_text())
    assert "new won" in done.stdout and done.stdout.count("# pair ") == 2
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert doc["base"] == {"revision": "HEAD", "commit": head}
    assert doc["cell"] == {"latency_ms": 0, "concurrency": 4} and doc["runs"] == 2
    for side in ("base", "new"):  # the base is HEAD: the same figures are reported
        summary = doc["sides"][side]
        assert summary["runs"] == len(summary["rates"]) == 2
        assert summary["delivered_every_case"] and summary["duplicates"] == 0
        assert all(rate > 0 for rate in summary["rates"]) and summary["cpu_ms"] > 0
        assert 0 < summary["slots_busy"] <= 1 and summary["turn_ms"] > 0
    assert 0 <= doc["new_won_pairs"] <= 2
    assert worktrees() == before


def test_a_revision_git_cannot_find_is_a_clear_error_and_leaves_nothing() -> None:
    before = worktrees()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--base", "no-such-revision-anywhere"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot use revision 'no-such-revision-anywhere'" in done.stderr
    assert done.stdout == ""
    assert worktrees() == before


def test_pairs_and_changes_compare_each_run_with_its_partner() -> None:
    def run(rate: float, cpu_ms: float, slots: float | None = 0.5) -> dict:
        turn_ms = None if slots is None else 0.3
        return {
            "rate": rate,
            "cpu_ms": cpu_ms,
            "slots_busy": slots,
            "turn_ms": turn_ms,
            "delivered": 10,
            "duplicates": 0,
        }

    runs = {
        "base": [run(100, 1.0, None), run(300, 0.8, None), run(200, 0.9, None)],
        "new": [run(150, 0.9), run(250, 0.7), run(210, 0.8)],
    }
    doc = compare(runs, cases=10)
    assert doc["new_won_pairs"] == 2  # 150 > 100 and 210 > 200; 250 < 300
    assert doc["rate_change_pct"] == pytest.approx(5.0)  # medians 210 against 200
    assert doc["cpu_change_pct"] == pytest.approx((0.8 / 0.9 - 1) * 100)
    assert doc["sides"]["base"]["slots_busy"] is None  # an older base does not report it
    older = compare({**runs, "base": [{**r, "cpu_ms": None} for r in runs["base"]]}, cases=10)
    assert older["cpu_change_pct"] is None and older["rate_change_pct"] == pytest.approx(5.0)
    assert doc["sides"]["new"]["slots_busy"] == 0.5
    assert doc["sides"]["new"]["delivered_every_case"]
    assert not compare({**runs, "new": [run(1, 1)] * 3}, cases=11)["sides"]["new"][
        "delivered_every_case"
    ]
