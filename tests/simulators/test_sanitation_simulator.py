"""The contractor simulator: takes only committed batches, answers with quirky files."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx

from hub.testing.simulators.base import SimulatorServer
from hub.testing.simulators.sanitation import SanitationSimulator

BATCH = b'"CaseRef","ServiceType","Address"\r\n"h-1","MT","1 A"\r\n"h-2","CR","2 B"\r\n'


def drop_batch(root: Path, name: str = "WO_1.csv", *, sidecar: bool = True) -> None:
    (root / "outbound" / name).write_bytes(BATCH)
    if sidecar:
        digest = hashlib.sha256(BATCH).hexdigest()
        (root / "outbound" / f"{name}.sha256").write_text(f"{digest}  {name}\nrows 2\n")


def inbound(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "inbound").iterdir())


def test_only_committed_batches_are_taken_and_acknowledged(tmp_path: Path) -> None:
    sim = SanitationSimulator(tmp_path)
    drop_batch(tmp_path, sidecar=False)
    assert sim.scan() == 0  # no sidecar: the hub has not committed it
    drop_batch(tmp_path)
    assert sim.scan() == 1
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["WO_1.csv", "WO_1.csv.sha256"]
    assert inbound(tmp_path) == ["ACK_WO_1.csv"]
    state = sim.snapshot()
    assert state["create_calls"] == {"h-1": 1, "h-2": 1}
    assert [r["ContractorRef"] for r in state["records"]] == ["00560250", "00560251"]


def test_a_case_sent_twice_is_two_jobs(tmp_path: Path) -> None:
    sim = SanitationSimulator(tmp_path)
    drop_batch(tmp_path, "WO_1.csv")
    drop_batch(tmp_path, "WO_2.csv")
    assert sim.snapshot()["duplicates"] == {"h-1": 2, "h-2": 2}


def test_status_windows_overlap_and_close_with_photo_or_reason(tmp_path: Path) -> None:
    sim = SanitationSimulator(tmp_path, faults={"could_not_complete": 0.5, "seed": 3})
    drop_batch(tmp_path)
    sim.advance(2)  # RECEIVED → SCHEDULED
    time.sleep(0.001)
    sim.advance(2, close=True)
    files = [n for n in inbound(tmp_path) if n.startswith("COMPLETIONS_")]
    assert len(files) == 2
    last = (tmp_path / "inbound" / files[-1]).read_text("windows-1252")
    assert last.count("SCHEDULED") == 2  # the second window repeats the first one's rows
    assert any(code in last for code in ("COLLECTED", "DELIVERED", "NOT_OUT", "NO_MATERIAL"))
    assert "https://photos." in last or "NO-SETOUT" in last or "NOTHING" in last


def test_file_faults_bad_late_duplicate(tmp_path: Path) -> None:
    sim = SanitationSimulator(tmp_path, faults={"bad_files": 1.0, "seed": 1})
    drop_batch(tmp_path)
    sim.scan()
    assert (tmp_path / "inbound" / "ACK_WO_1.csv").read_bytes().startswith(b"<!DOCTYPE html>")
    sim.set_faults({"duplicate_files": 1.0})
    drop_batch(tmp_path, "WO_2.csv")
    sim.scan()
    first, resent = (tmp_path / "inbound" / n for n in ("ACK_WO_2.csv", "ACK_WO_2_resend.csv"))
    assert first.read_bytes() == resent.read_bytes()
    sim.set_faults({"late_files": 1.0, "late_seconds": 0.2})
    drop_batch(tmp_path, "WO_3.csv")
    sim.scan()
    assert "ACK_WO_3.csv" not in inbound(tmp_path)
    time.sleep(0.25)
    sim.scan()
    assert "ACK_WO_3.csv" in inbound(tmp_path)


def test_control_over_http_like_the_other_simulators(tmp_path: Path) -> None:
    sim = SanitationSimulator(tmp_path)
    with SimulatorServer(sim) as server:
        drop_batch(tmp_path)
        state = httpx.get(f"{server.url}/__sim__/state").json()
        assert state["create_calls"] == {"h-1": 1, "h-2": 1} and state["duplicates"] == {}
        faults = httpx.post(f"{server.url}/__sim__/faults", json={"preset": "flaky"}).json()
        assert faults["bad_files"] > 0
        changed = httpx.post(f"{server.url}/__sim__/advance", json={"count": 5, "close": True})
        assert len(changed.json()["changed"]) == 2
        httpx.post(f"{server.url}/__sim__/reset", json={})
        assert httpx.get(f"{server.url}/__sim__/state").json()["records"] == []
