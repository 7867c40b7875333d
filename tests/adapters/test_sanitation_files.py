"""Batch files: the contractor's layout, atomic writes, names that are never paths."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from pathlib import Path

import pytest

from adapters.sanitation.drops import LocalDirectory, UnsafeName, safe_name
from adapters.sanitation.files import LedgerEntry, batch_file_name, render_csv
from hub.mapping import load_mappings
from hub.testing.harness import REPO_MAPPINGS


@pytest.fixture(scope="module")
def layout():
    return load_mappings(REPO_MAPPINGS).departments["sanitation"].file_layout.work_orders


def test_batch_file_follows_the_layout(layout) -> None:
    rows = [
        {"CaseRef": "h-1", "ServiceType": "MT", "Address": "1 Rue Café", "Notes": "two\nlines"},
        {"CaseRef": "h-2", "ServiceType": "BK", "Items": ["sofa", "fridge"], "Latitude": 42.5},
    ]
    data = render_csv(layout, rows)
    text = data.decode("windows-1252")
    lines = text.split("\r\n")
    assert lines[0].startswith('"CaseRef","ServiceType","Priority"')  # quoting: all, in order
    assert '"1 Rue Café"' in lines[1] and '"two lines"' in lines[1]  # no raw newline in a row
    assert '"sofa;fridge"' in lines[2] and '"42.5"' in lines[2]
    assert text.endswith("\r\n") and len(lines) == 4
    assert "é".encode("windows-1252") in data  # the contractor's encoding, not UTF-8


def test_emoji_cannot_block_a_batch(layout) -> None:
    data = render_csv(layout, [{"CaseRef": "h", "Notes": "bins 🗑️ gone"}])
    assert b"bins ? gone" in data or b"bins ?? gone" in data


def test_batch_names_are_unique_and_follow_the_pattern(layout) -> None:
    when = datetime(2026, 3, 4, 5, 6)
    assert batch_file_name(layout, when, "abc") == "WO_20260304_0506_abc.csv"


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "a/b.csv", "..", ".hidden", "x\n.csv", "C:\\x.csv", "", "ok..csv"]
)
def test_traversal_and_odd_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeName):
        safe_name(name)


async def test_local_write_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    drop = LocalDirectory(tmp_path)
    await drop.ensure_folders()
    await drop.write_atomic("outbound", "WO_1.csv", b"a,b\r\n")
    assert (tmp_path / "outbound" / "WO_1.csv").read_bytes() == b"a,b\r\n"
    assert [p.name for p in (tmp_path / "outbound").iterdir()] == ["WO_1.csv"]
    with pytest.raises(UnsafeName):
        await drop.write_atomic("outbound", "../escape.csv", b"x")
    with pytest.raises(UnsafeName):
        await drop.write_atomic("../etc", "x.csv", b"x")
    assert not (tmp_path / "escape.csv").exists()


async def test_concurrent_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    drop = LocalDirectory(tmp_path)
    await drop.ensure_folders()
    payload = b"x" * 2_000_000 + b"\r\n"
    seen: list[int] = []

    def watch() -> None:
        for _ in range(2000):
            for path in (tmp_path / "outbound").glob("*.csv"):
                with contextlib.suppress(FileNotFoundError):
                    seen.append(len(path.read_bytes()))

    watcher = asyncio.create_task(asyncio.to_thread(watch))
    for n in range(5):
        await drop.write_atomic("outbound", f"WO_{n}.csv", payload)
    await watcher
    assert set(seen) <= {len(payload)}


def test_ledger_entry_round_trips() -> None:
    entry = LedgerEntry(batch="WO_1_abc.csv", state="pending", rows={"h1": 1, "h2": 2})
    again = LedgerEntry.loads(entry.dumps())
    assert again == entry and again.external_id("h2") == "WO_1_abc#0002"
