"""What the benchmark scripts' tests share: run a script as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(
    script: Path, *argv: str, timeout: float = 180
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run a benchmark script from the repository root; it must succeed and end with its
    JSON document, which is returned with the finished process."""
    done = subprocess.run(
        [sys.executable, str(script), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done, json.loads(done.stdout.strip().splitlines()[-1])
