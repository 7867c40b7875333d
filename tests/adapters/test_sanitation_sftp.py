"""The SFTP drop against a real asyncssh server on 127.0.0.1 (throwaway host key)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.sanitation import SanitationAdapter
from adapters.sanitation.drops import UnsafeName
from adapters.sanitation.files import ARCHIVE, INDEX, LEDGER, TAKEN
from hub.adapters import AuthFailed, OutboundWorkOrder, Transient, UnknownOutcome
from hub.testing.harness import REPO_MAPPINGS
from hub.testing.simulators.sanitation import (
    DEFAULT_PASSWORD,
    PASSWORD_ENV,
    SanitationSimulator,
    make_host_key,
)


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SanitationSimulator]:
    monkeypatch.setenv(PASSWORD_ENV, DEFAULT_PASSWORD)
    simulator = SanitationSimulator(tmp_path / "drop")
    simulator.start_sftp(tmp_path / "host_key")
    yield simulator
    simulator.stop()


def settings(sim: SanitationSimulator, **overrides: Any) -> dict[str, Any]:
    assert sim.sftp is not None
    return {
        "drop": "sftp",
        "path": "/",
        "host": "127.0.0.1",
        "port": sim.sftp.port,
        "username": "hub",
        "password": {"env": PASSWORD_ENV},
        "host_key": sim.sftp.public_key,
        "mappings_dir": str(REPO_MAPPINGS),
        "batch_max_wait_seconds": 0.01,
        "timeout_seconds": 0.5,
        **overrides,
    }


def order(hub_id: str) -> OutboundWorkOrder:
    return OutboundWorkOrder(
        hub_id=hub_id, department="sanitation", work_order_type="BK", payload={"Address": "1 A"}
    )


async def test_a_server_with_another_host_key_is_refused(sim, tmp_path: Path) -> None:
    impostor = make_host_key(tmp_path / "other_key")
    adapter = SanitationAdapter.from_settings(settings(sim, host_key=impostor))
    with pytest.raises(AuthFailed, match="host key"):
        await adapter.create(order("h-1"))
    assert sim.state()["records"] == []


def test_sftp_needs_a_host_key_and_a_secret_from_env_or_file(sim) -> None:
    with pytest.raises(ValueError, match="host_key or known_hosts"):
        SanitationAdapter.from_settings(settings(sim, host_key=None))
    with pytest.raises(ValueError, match="environment or a file"):
        SanitationAdapter.from_settings(settings(sim, password="literal"))


async def test_server_failures_are_transient_and_send_nothing(sim) -> None:
    adapter = SanitationAdapter.from_settings(settings(sim))
    await adapter.find_by_reference("warm-up")
    sim.set_faults({"error_5xx": 1.0})
    with pytest.raises(Transient):
        await adapter.create(order("h-2"))
    sim.set_faults("none")
    assert await adapter.find_by_reference("h-2") is None
    ref = await adapter.create(order("h-2"))
    assert sim.state()["create_calls"] == {"h-2": 1}
    assert (await adapter.find_by_reference("h-2")) == ref
    await adapter.aclose()


async def test_lost_answer_after_commit_is_unknown_then_adopted(sim) -> None:
    adapter = SanitationAdapter.from_settings(settings(sim))
    await adapter.find_by_reference("warm-up")
    sim.set_faults({"timeout_after_commit": 1.0, "hang_seconds": 1.0})
    with pytest.raises(UnknownOutcome):
        await adapter.create(order("h-3"))
    sim.set_faults("none")
    fresh = SanitationAdapter.from_settings(settings(sim))  # another worker, after a restart
    found = await fresh.find_by_reference("h-3")
    assert found is not None and sim.state()["create_calls"] == {"h-3": 1}
    await adapter.aclose()
    await fresh.aclose()


async def test_remote_names_are_never_paths(sim) -> None:
    adapter = SanitationAdapter.from_settings(settings(sim))
    with pytest.raises(UnsafeName):
        await adapter.drop.write_atomic("inbound", "../../etc/cron.d/x", b"x")
    with pytest.raises(UnsafeName):
        await adapter.drop.read("../", "x")
    await adapter.aclose()


async def test_day_folders_compaction_and_index_lookups_over_sftp(sim) -> None:
    adapter = SanitationAdapter.from_settings(settings(sim, ledger_compact_after_seconds=0))
    ref = await adapter.create(order("h-5"))
    batch = ref.external_id.partition("#")[0] + ".csv"
    sim.advance(1, close=True)  # takes the batch (to taken/), acknowledges, closes the job
    assert await adapter.drop.exists(TAKEN, batch)
    assert not await adapter.drop.exists(TAKEN, "WO_never.csv")
    # 100 days back: the archive's existing day folders are listed (readdir), not each day.
    page = await adapter.poll_changes(datetime.now(UTC) - timedelta(days=100))
    assert {e.raw_code for e in page.events if e.external_id == ref.external_id} >= {"ACK"}
    assert await adapter.drop.subfolders(ARCHIVE) == [f"{datetime.now(UTC):%Y%m%d}"]
    assert await adapter.drop.list(LEDGER) == []  # the poll's maintenance folded it
    assert len(await adapter.drop.subfolders(INDEX)) == 1
    fresh = SanitationAdapter.from_settings(settings(sim))
    assert await fresh.find_by_reference("h-5") == ref
    assert await fresh.find_by_reference("h-6") is None
    await adapter.aclose()
    await fresh.aclose()
