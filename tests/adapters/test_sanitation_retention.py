"""Years of work orders: bounded memory, a compacted ledger, polls that read only new files.

docs/decisions/0009-file-drop-retention.md: a process keeps the young ledger and the hub
ids its status files still name (open ones), not every work order ever sent; settled
ledger entries are folded into index/ and found there; archived files live in day
folders, so a poll lists and parses only the days it reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.sanitation import SanitationAdapter
from adapters.sanitation.files import (
    ABANDONED,
    ARCHIVE,
    INBOUND,
    INDEX,
    LEDGER,
    PENDING,
    SENT,
    TAKEN,
    LedgerEntry,
    bucket_of,
)
from adapters.sanitation.index import LedgerIndex, Segment
from hub.adapters import OutboundWorkOrder
from hub.testing.harness import REPO_MAPPINGS
from hub.testing.simulators.sanitation import SanitationSimulator

HEADER = "CaseRef,ContractorRef,Status,ReasonCode,CompletedAt,Crew,Notes,PhotoUrl\r\n"
STAMP = "%Y%m%dT%H%M%S%fZ"


def make(tmp_path: Path, **settings: Any) -> SanitationAdapter:
    return SanitationAdapter.from_settings(
        {
            "path": str(tmp_path),
            "mappings_dir": str(REPO_MAPPINGS),
            "batch_max_wait_seconds": 0.01,
            **settings,
        }
    )


def order(hub_id: str) -> OutboundWorkOrder:
    return OutboundWorkOrder(
        hub_id=hub_id, department="sanitation", work_order_type="MT", payload={"Address": "1 A"}
    )


def status_file(rows: list[tuple[str, str]], minute: int = 15) -> bytes:
    lines = [f"{h},00{i:06d},{code},,03/02/2026 09:{minute:02d},Crew 7,,\r\n"
             for i, (h, code) in enumerate(rows)]  # fmt: skip
    return (HEADER + "".join(lines)).encode()


def counting(adapter: SanitationAdapter, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every list/read the adapter makes on its drop, as 'list archive/20260203'."""
    calls: Counter[str] = Counter()
    for method in ("list", "read", "subfolders"):
        original = getattr(adapter.drop, method)

        async def counted(folder: str, *args: Any, _m=method, _o=original) -> Any:
            calls[f"{_m} {folder}"] += 1
            return await _o(folder, *args)

        monkeypatch.setattr(adapter.drop, method, counted)
    return calls


async def test_after_thousands_closed_memory_holds_the_open_ones_and_old_ones_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = make(
        tmp_path,
        ledger_compact_after_seconds=0,
        maintenance_every_seconds=0,
        closed_idle_seconds=0,
    )
    hub_ids = [f"case-{n:05d}" for n in range(3000)]
    refs = {}
    for start in range(0, len(hub_ids), 500):  # six batches of 500 rows
        chunk = hub_ids[start : start + 500]
        for hub_id, ref in zip(chunk, await asyncio.gather(*map(adapter.create, map(order, chunk))),
                               strict=True):  # fmt: skip
            refs[hub_id] = ref.external_id
    still_open = hub_ids[-40:]
    since = datetime.now(UTC) - timedelta(seconds=1)
    for n, start in enumerate(range(0, len(hub_ids), 1000)):
        chunk = hub_ids[start : start + 1000]
        rows = [(h, "DISPATCHED" if h in still_open else "COLLECTED") for h in chunk]
        (tmp_path / INBOUND / f"COMPLETIONS_{n}.csv").write_bytes(status_file(rows))

    page = await adapter.poll_changes(since)  # triage, compaction, events
    assert len(page.events) == 3000
    assert {e.external_id for e in page.events} == set(refs.values())  # ids from the ledger
    later = await adapter.poll_changes(page.next_watermark + timedelta(seconds=1))
    assert later.events == []

    footprint = adapter.footprint()
    assert footprint["ledger_entries"] == footprint["ledger_hub_ids"] == 0  # all folded
    assert footprint["known_refs"] == len(still_open)  # O(open), not O(every one sent)
    assert footprint["parsed_rows"] == 0  # files behind the watermark are let go
    assert list((tmp_path / LEDGER).iterdir()) == []
    assert len(list((tmp_path / INDEX).iterdir())) == 256  # one folder per hub-id bucket

    calls = counting(adapter, monkeypatch)
    old = hub_ids[7]
    found = await adapter.find_by_reference(old)
    assert found is not None and found.external_id == refs[old]
    bucket = f"{INDEX}/{bucket_of(old)}"  # one bucket listed (its segments may be cached)
    assert calls[f"list {bucket}"] == 1 and set(calls) <= {f"list {bucket}", f"read {bucket}"}
    assert await adapter.find_by_reference("never-sent") is None
    fresh = make(tmp_path)  # another worker, after a restart: nothing in memory
    again = await fresh.find_by_reference(hub_ids[2999])
    assert again is not None and again.external_id == refs[hub_ids[2999]]
    batches = len(list((tmp_path / "outbound").glob("*.csv")))
    open_one = still_open[0]  # held in memory: a re-run of its create sends nothing
    assert (await adapter.create(order(open_one))).external_id == refs[open_one]
    assert len(list((tmp_path / "outbound").glob("*.csv"))) == batches


async def test_a_batch_folded_during_a_lookup_is_still_found(tmp_path: Path) -> None:
    writer, looker = make(tmp_path), make(tmp_path, ledger_compact_after_seconds=0)
    ref = await writer.create(order("h-1"))
    lookup = looker.index.lookup
    folded = []

    async def then_fold(hub_ids: Any) -> dict[str, str]:
        found = await lookup(hub_ids)
        if not folded:  # after the first look in index/: another worker compacts
            folded.append(await make(tmp_path, ledger_compact_after_seconds=0).compact())
        return found

    looker.index.lookup = then_fold  # type: ignore[method-assign]
    found = await looker.find_by_reference("h-1")
    assert folded == [1] and not list((tmp_path / LEDGER).iterdir())
    assert found is not None and found.external_id == ref.external_id


async def test_compaction_keeps_an_entry_a_slow_writer_changed(tmp_path: Path) -> None:
    adapter = make(tmp_path, ledger_compact_after_seconds=0)
    await adapter.poll_changes(datetime.now(UTC))  # folders
    entry = LedgerEntry(batch="WO_20260203_0930_x.csv", state=ABANDONED, rows={"h-1": 1})
    path = tmp_path / LEDGER / entry.key
    path.write_bytes(entry.dumps())
    await adapter.find_by_reference("h-1")  # read (abandoned: final, not read again)
    entry.state = SENT  # the writer thought dead finishes its batch after all
    path.write_bytes(entry.dumps())
    assert await adapter.compact() == 0 and path.exists()
    found = await adapter.find_by_reference("h-1")
    assert found is not None and found.external_id == entry.external_id("h-1")
    assert await adapter.compact() == 1 and not path.exists()
    assert (await make(tmp_path).find_by_reference("h-1")) == found


async def test_a_pending_batch_is_resolved_without_listing_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = make(tmp_path, pending_grace_seconds=0.01)
    await adapter.poll_changes(datetime.now(UTC))
    entry = LedgerEntry(batch="WO_20260203_0930_y.csv", state=PENDING, rows={"h-2": 1})
    (tmp_path / LEDGER / entry.key).write_bytes(entry.dumps())
    (tmp_path / TAKEN / entry.batch).write_bytes(b"taken by the contractor\r\n")
    for n in range(50):  # the contractor's history: never listed by the hub
        (tmp_path / TAKEN / f"WO_old_{n}.csv").write_bytes(b"x\r\n")
    calls = counting(adapter, monkeypatch)
    found = await adapter.find_by_reference("h-2")
    assert found is not None and found.external_id == entry.external_id("h-2")
    assert calls[f"list {TAKEN}"] == 0
    assert json.loads((tmp_path / LEDGER / entry.key).read_bytes())["state"] == SENT


def archive(tmp_path: Path, when: datetime, name: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()[:16]
    archived = f"{when:{STAMP}}_{digest}_{name}"
    folder = tmp_path / ARCHIVE / f"{when:%Y%m%d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / archived).write_bytes(data)
    return archived


async def test_polls_list_and_parse_only_the_days_they_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = make(tmp_path)
    now = datetime.now(UTC)
    await adapter.poll_changes(now)  # folders
    for day in range(1, 120):  # four months of history, one file a day
        archive(tmp_path, now - timedelta(days=day), f"COMPLETIONS_{day}.csv",
                status_file([(f"old-{day}", "COLLECTED")]))  # fmt: skip
    calls = counting(adapter, monkeypatch)
    since = now - timedelta(minutes=5)
    (tmp_path / INBOUND / "COMPLETIONS_new.csv").write_bytes(status_file([("new-1", "SCHEDULED")]))
    first = await adapter.poll_changes(since)
    second = await adapter.poll_changes(since)
    assert (
        [e.hub_reference for e in first.events]
        == ["new-1"]
        == [e.hub_reference for e in second.events]
    )
    listed = {c.split(" ", 1)[1] for c in calls if c.startswith("list ")}
    days = {f"{ARCHIVE}/{now + timedelta(days=n):%Y%m%d}" for n in (-1, 0, 1)}
    assert listed <= {INBOUND, LEDGER, INDEX + "/" + bucket_of("new-1")} | days, listed
    assert not [c for c in calls if c.startswith(f"read {ARCHIVE}")]  # parsed at triage, once
    assert not [c for c in calls if c.startswith("subfolders")]


async def test_old_flat_archives_move_to_day_folders_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    when = datetime.now(UTC) - timedelta(minutes=2)
    data = status_file([("h-flat", "COLLECTED")])
    flat = archive(tmp_path, when, "COMPLETIONS_flat.csv", data)
    (tmp_path / ARCHIVE / f"{when:%Y%m%d}" / flat).rename(tmp_path / ARCHIVE / flat)
    adapter = make(tmp_path)
    page = await adapter.poll_changes(when - timedelta(seconds=1))
    assert [e.hub_reference for e in page.events] == ["h-flat"]
    assert (tmp_path / ARCHIVE / f"{when:%Y%m%d}" / flat).read_bytes() == data  # same bytes
    assert [p.name for p in (tmp_path / ARCHIVE).iterdir()] == [f"{when:%Y%m%d}"]
    calls = counting(adapter, monkeypatch)
    await adapter.poll_changes(when - timedelta(seconds=1))
    assert calls[f"list {ARCHIVE}"] == 0  # the archive root is not listed again


async def test_a_long_way_back_comes_in_pages_that_move_on(tmp_path: Path) -> None:
    adapter = make(tmp_path, poll_page_rows=25)
    now = datetime.now(UTC)
    await adapter.poll_changes(now)
    expected = set()
    for day in range(0, 200, 10):  # beyond 62 days: the existing day folders are listed
        for n in range(2):
            rows = [(f"d{day}-{n}-{i}", "COLLECTED") for i in range(10)]
            archive(tmp_path, now - timedelta(days=day, minutes=n), f"C_{day}_{n}.csv",
                    status_file(rows))  # fmt: skip
            expected |= {h for h, _ in rows}
    since, seen, pages = now - timedelta(days=400), set(), 0
    while True:
        page = await adapter.poll_changes(since)
        pages += 1
        seen |= {e.hub_reference for e in page.events}
        assert len(page.events) <= 30  # a page ends between files once it has 25 rows
        if not page.more:
            break
        assert page.next_watermark is not None and page.next_watermark > since
        since = page.next_watermark
    assert seen == expected and pages == 20
    assert adapter.footprint()["parsed_rows"] <= 30


async def test_a_resend_older_than_the_duplicate_window_is_archived_not_applied_twice(
    tmp_path: Path,
) -> None:
    adapter = make(tmp_path, duplicate_window_days=2)
    now = datetime.now(UTC)
    await adapter.poll_changes(now)
    data = status_file([("h-9", "COLLECTED")])
    archive(tmp_path, now - timedelta(days=5), "COMPLETIONS_9.csv", data)
    old = await adapter.poll_changes(now - timedelta(days=6))
    (tmp_path / INBOUND / "COMPLETIONS_9_resend.csv").write_bytes(data)
    page = await adapter.poll_changes(now - timedelta(days=6))
    assert page.quarantined == []  # not compared with last week's files …
    assert [e.external_event_id for e in page.events] == [  # … and the same event: a no-op
        e.external_event_id for e in old.events
    ]


def same_bucket(count: int, bucket: str = "a7") -> list[str]:
    ids, n = [], 0
    while len(ids) < count:
        if bucket_of(f"id-{n}") == bucket:
            ids.append(f"id-{n}")
        n += 1
    return ids


def segments(tmp_path: Path, bucket: str = "a7") -> list[Segment]:
    names = [p.name for p in (tmp_path / INDEX / bucket).iterdir()]
    return [s for s in map(Segment.parse, names) if s]


async def test_index_segments_stay_few_as_a_bucket_grows(tmp_path: Path) -> None:
    adapter = make(tmp_path)
    await adapter.poll_changes(datetime.now(UTC))
    ids = same_bucket(1200)
    written = []
    write = adapter.drop.write_atomic

    async def counted(folder: str, name: str, data: bytes) -> None:
        written.append(len(json.loads(data)["refs"]))
        await write(folder, name, data)

    adapter.drop.write_atomic = counted  # type: ignore[method-assign]
    for start in range(0, len(ids), 6):  # 200 compaction runs of 6 rows each
        await adapter.index.add({h: f"WO#{h}" for h in ids[start : start + 6]})
        assert len(segments(tmp_path)) <= 6  # ~log4(rows): sizes grow geometrically
    # Each row is rewritten a few times (log), not at every run: 120,600 if all were folded.
    assert sum(written) < 12 * len(ids)
    fresh = LedgerIndex(adapter.drop)
    assert await fresh.lookup(ids) == {h: f"WO#{h}" for h in ids}
    assert sum(s.count for s in segments(tmp_path)) == len(ids)  # no row twice at rest


async def test_two_workers_folding_one_bucket_at_once_lose_nothing(tmp_path: Path) -> None:
    adapter = make(tmp_path)
    await adapter.poll_changes(datetime.now(UTC))
    first, second, third = (ids := same_bucket(30))[:10], ids[10:20], ids[20:]
    await adapter.index.add({h: "old" for h in first})
    slow, fast = LedgerIndex(adapter.drop), LedgerIndex(adapter.drop)
    fast_done = asyncio.Event()
    write = adapter.drop.write_atomic

    class SlowDrop:  # the slow worker writes only after the fast one folded and removed
        def __getattr__(self, name: str) -> Any:
            return getattr(adapter.drop, name)

        async def write_atomic(self, folder: str, name: str, data: bytes) -> None:
            await fast_done.wait()
            await write(folder, name, data)

    slow.drop = SlowDrop()  # type: ignore[assignment]

    async def fast_fold() -> None:
        await asyncio.sleep(0.05)  # the slow one has listed and read the old segment
        await fast.add({h: "fast" for h in second})
        fast_done.set()

    await asyncio.gather(slow.add({h: "slow" for h in third}), fast_fold())
    found = await LedgerIndex(adapter.drop).lookup(ids)
    assert found == {**{h: "old" for h in first}, **{h: "fast" for h in second},
                     **{h: "slow" for h in third}}  # fmt: skip


def test_the_simulator_keeps_only_its_current_window(tmp_path: Path) -> None:
    sim = SanitationSimulator(tmp_path, window_minutes=0)
    batch = b'"CaseRef","ServiceType"\r\n' + b"".join(
        f'"h-{n}","MT"\r\n'.encode() for n in range(30)
    )
    (tmp_path / "outbound" / "WO_1.csv").write_bytes(batch)
    digest = hashlib.sha256(batch).hexdigest()
    (tmp_path / "outbound" / "WO_1.csv.sha256").write_text(f"{digest}  WO_1.csv\nrows 30\n")
    for _ in range(10):
        sim.advance(30)
    assert len(sim.rows) <= 30  # not 300: rows older than the window are let go
