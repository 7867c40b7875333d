"""The `hub` command explains the two set-up mistakes a newcomer makes first, in one
sentence and exit code 2, instead of a traceback or a misleading result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOSTON = REPO.parent / "shared" / "realworld" / "311_records" / "boston" / "boston311-100.csv"


def hub(*args: str, cwd: Path, database: Path) -> subprocess.CompletedProcess[str]:
    env = {"HUB_DATABASE_URL": f"sqlite:///{database}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_database_without_the_schema_says_run_db_upgrade(tmp_path: Path) -> None:
    result = hub("dlq", "list", cwd=REPO, database=tmp_path / "fresh.db")
    assert result.returncode == 2
    assert "run `hub db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_mappings_directory_is_named_not_reported_as_unknown_services(tmp_path: Path) -> None:
    database = tmp_path / "hub.db"
    assert hub("db", "upgrade", cwd=tmp_path, database=database).returncode == 0
    result = hub("import", str(BOSTON), "--dry-run", cwd=tmp_path, database=database)
    assert result.returncode == 2
    assert f"{tmp_path / 'mappings'}:0: mappings: directory not found" in result.stderr
    assert "unknown service" not in result.stdout + result.stderr
