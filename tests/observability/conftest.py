"""Observability fixtures: a small simulated city on both stores, captured JSON logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.observability.logging import CHATTY_LOGGERS, PAYLOAD_LOGGERS, configure_logging
from hub.testing.harness import SimulatedCity, simulated_city


@pytest.fixture
def city(tmp_path: Path, db_url: str) -> Iterator[SimulatedCity]:
    with simulated_city(
        tmp_path / "city",
        database_url=db_url,
        timeout_seconds=0.5,
        hang_seconds=0.6,
        gis=False,
        payments=False,
    ) as c:
        yield c


class CapturedLogs(io.StringIO):
    def records(self) -> list[dict]:
        """Every line must be one JSON object: that is the format's contract."""
        return [json.loads(line) for line in self.getvalue().splitlines() if line]


@pytest.fixture
def json_logs() -> Iterator[CapturedLogs]:
    """JSON logging at DEBUG into a buffer, as `hub worker` sets it up; undone afterwards."""
    root = logging.getLogger()
    names = (*PAYLOAD_LOGGERS, *CHATTY_LOGGERS)
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in names})
    stream = CapturedLogs()
    configure_logging(json=True, level="DEBUG", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
