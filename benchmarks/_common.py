"""What the dispatch benchmarks (dispatch.py, soap_dispatch.py) share: a department
simulator in its own process and its ``/__sim__/`` admin routes, generated cases that route
to one department, the hub configured for that one department, a fresh migrated database
per run, and the Dispatcher run until the outbox is empty.

Importing it puts the repository on ``sys.path``, so the scripts run from anywhere.
"""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from hub.config import DeliveryPolicy, DepartmentConfig, HubConfig, WorkerConfig  # noqa: E402
from hub.mapping import MappingSet  # noqa: E402
from hub.model import Case  # noqa: E402
from hub.services.dispatch import Dispatcher  # noqa: E402
from hub.services.runtime import Hub  # noqa: E402
from hub.store.migrate import upgrade  # noqa: E402
from hub.testing.generator import CaseGenerator  # noqa: E402
from hub.testing.harness import REPO_MAPPINGS  # noqa: E402

# --------------------------------------------------------------------------- simulator


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def simulator_process(department: str, log: Path) -> Iterator[str]:
    """`hub simulate <department>` in its own process (own event loop, own GIL); its output
    (e.g. ClientDisconnect tracebacks when a client drops a connection) goes to `log`."""
    port = free_port()
    command = [sys.executable, "-m", "hub.cli", "simulate", department, "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_answering(url, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its output:\n{log.read_text()[-2000:]}") from exc
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_until_answering(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode}")
        try:
            httpx.get(f"{url}/__sim__/state", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"simulator at {url} did not answer within {timeout}s")


def sim_admin(url: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.post(f"{url}/__sim__/{action}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def sim_state(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/__sim__/state", timeout=120)
    response.raise_for_status()
    return response.json()


# --------------------------------------------------------------------------- the hub


def routed_cases(
    mappings: MappingSet, department: str, n: int, *, seed: int, oversample: int
) -> list[Case]:
    """`n` generated cases that route to `department`, drawn from `n * oversample`."""
    generated = CaseGenerator(mappings, seed=seed).generate(n * oversample)
    routed = (c for c in generated if (r := mappings.route(c)) and r.department == department)
    cases = list(itertools.islice(routed, n))
    if len(cases) != n:
        raise RuntimeError(f"only {len(cases)} of {n} generated cases route to {department}")
    return cases


def hub_config(department: str, settings: dict[str, Any], concurrency: int) -> HubConfig:
    """The hub with one department, `concurrency` deliveries in flight, claiming the
    default batch, or as many rows as calls in flight when that is more (up to 256)."""
    default_batch = WorkerConfig.model_fields["batch_size"].default
    worker = WorkerConfig(
        concurrency=concurrency,
        batch_size=max(default_batch, min(concurrency, 256)),
        idle_poll_seconds=0.05,
    )
    config = DepartmentConfig(
        adapter=department,
        settings=settings,
        delivery=DeliveryPolicy(max_concurrency=concurrency),
    )
    return HubConfig(mappings=REPO_MAPPINGS, departments={department: config}, worker=worker)


async def dispatch_all(hub: Hub) -> tuple[float, dict[str, Any]]:
    """Seconds the Dispatcher takes to empty the outbox, and its stats."""
    dispatcher = Dispatcher(hub)
    started = time.perf_counter()
    try:
        stats = await dispatcher.run(until_empty=True, timeout=600)
    finally:
        await hub.aclose()
    return time.perf_counter() - started, stats.as_dict()


# --------------------------------------------------------------------------- databases


class Store:
    """A fresh, migrated database per cell: a copy of a migrated SQLite file, or a new
    PostgreSQL schema (dropped again by `close`)."""

    def __init__(self, directory: Path, postgres: str | None) -> None:
        self.directory = directory
        self.postgres = postgres
        self.template = directory / "template.db"
        self._schemas: list[str] = []
        if postgres is None:
            upgrade(f"sqlite:///{self.template}")

    def fresh(self, name: str) -> str:
        if self.postgres is None:
            path = self.directory / f"{name}.db"
            shutil.copyfile(self.template, path)
            return f"sqlite:///{path}"
        return self._fresh_schema()

    def _fresh_schema(self) -> str:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        schema = f"hubbench_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.postgres)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
        self._schemas.append(schema)
        options = {"options": f"-csearch_path={schema}"}
        url = make_url(self.postgres).update_query_dict(options)
        rendered = url.render_as_string(hide_password=False)
        upgrade(rendered)
        return rendered

    def close(self) -> None:
        if self.postgres is None or not self._schemas:
            return
        from sqlalchemy import create_engine, text

        admin = create_engine(self.postgres)
        with admin.begin() as conn:
            for schema in self._schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
