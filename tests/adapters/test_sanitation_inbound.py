"""Inbound ack/status files: real-world quirks parsed, bad files quarantined with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.sanitation import SanitationAdapter
from adapters.sanitation.files import ARCHIVE, INBOUND, LEDGER, PENDING, SENT, LedgerEntry
from adapters.sanitation.parse import BadFile
from hub.testing.harness import REPO_MAPPINGS

VENDOR = Path("/work/shared/realworld/vendor")
HTML = b"<!DOCTYPE html><html><head><title>Runtime Error</title></head><body>500</body></html>"
QUIRKY = (
    # A banner line, columns renamed/reordered, mixed quoting, zero-padded ids, day-first.
    b"Metro Hauling completions export,03/02/2026\r\n"
    b'"Completed At",status,"Case Ref",Contractor_Ref,PhotoUrl,ReasonCode,Notes,Crew\r\n'
    b'"03/02/2026 09:15",COLLECTED,h-1,"00560250",https://p.example/1.jpg,,"Bins, both",7\r\n'
    b'04/02/2026 17:40:05,"NOT_OUT","h-2",00560251,,NO-SETOUT,Not at kerb,7\r\n'
)


@pytest.fixture
def adapter(tmp_path: Path) -> SanitationAdapter:
    return SanitationAdapter.from_settings(
        {"path": str(tmp_path), "mappings_dir": str(REPO_MAPPINGS)}
    )


def test_quirky_file_is_read_by_header_name(adapter: SanitationAdapter) -> None:
    first, second = adapter.events_of(QUIRKY)
    assert (first.hub_reference, first.raw_code, first.closure_text) == ("h-1", "COLLECTED",
                                                                          "Bins, both")  # fmt: skip
    assert first.raw_text == "COLLECTED (contractor ref 00560250)"  # zero padding kept
    # 3 Feb (day-first), 09:15 New York (EST) = 14:15 UTC
    assert first.occurred_at == datetime(2026, 2, 3, 14, 15, tzinfo=UTC)
    assert first.evidence[0].url == "https://p.example/1.jpg"
    assert second.occurred_at == datetime(2026, 2, 4, 22, 40, 5, tzinfo=UTC)
    assert (second.closure_code, second.raw_code) == ("NO-SETOUT", "NOT_OUT")


def test_overlapping_windows_give_the_same_event_ids(adapter: SanitationAdapter) -> None:
    reordered = QUIRKY.replace(b"Metro Hauling completions export,03/02/2026\r\n", b"")
    ids = {e.external_event_id for e in adapter.events_of(QUIRKY)}
    assert ids == {e.external_event_id for e in adapter.events_of(reordered)}


def test_a_row_repeated_lower_down_is_the_same_event_at_its_new_line(adapter) -> None:
    # The next window repeats the rows below new ones: each is built once and reused, and
    # still carries this file's line (its order within a second) and what the process
    # has learned of its external id since.
    _banner, header, first, second, _ = QUIRKY.split(b"\r\n")
    new = b"05/02/2026 08:00,COLLECTED,h-3,00560252,,,,7"
    later = b"\r\n".join([header, new, new.replace(b"h-3", b"h-4"), first, second, b""])
    before = adapter.events_of(QUIRKY)
    adapter._known_external = lambda hub_id, pending=False: "WO-9" if hub_id == "h-2" else None
    after = adapter.events_of(later)[2:]
    for old, again, line in zip(before, after, ("000004", "000005"), strict=True):
        assert again.external_event_id == old.external_event_id
        assert again.sequence == old.sequence.rsplit(":", 1)[0] + ":" + line
        assert again.model_dump(exclude={"sequence", "external_id"}) == old.model_dump(
            exclude={"sequence", "external_id"}
        )
    assert (after[0].external_id, after[1].external_id) == ("00560250", "WO-9")
    assert before[1].external_id == "00560251"  # an event already returned is not changed


def test_the_rows_kept_as_events_are_bounded(adapter, monkeypatch) -> None:
    import adapters.sanitation.adapter as module

    monkeypatch.setattr(module, "ROW_EVENTS_KEPT", 3)
    rows = [f"0{d}/02/2026 08:00,COLLECTED,h-{d},,,,,7".encode() for d in range(1, 6)]
    adapter.events_of(b"\r\n".join([b"CompletedAt,Status,CaseRef,ContractorRef,PhotoUrl,"
                                     b"ReasonCode,Notes,Crew", *rows, b""]))  # fmt: skip
    assert adapter.footprint()["row_events"] == 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (HTML, "HTML page"),
        (QUIRKY[:-30], "truncated"),
        (b"", "empty"),
        (b"CaseRef,Status\r\nh-1\r\n", "fields"),
        (b"Report failed\r\nplease contact support\r\n", "no header row"),
        (QUIRKY.replace(b"04/02/2026 17:40:05", b"31/02/2026 17:40"), "date"),
        (b'CaseRef,Status,CompletedAt\r\n"h-1,COLLECTED,01/01/2026 10:00\r\n', "malformed"),
    ],
)
def test_bad_files_are_refused_whole(adapter: SanitationAdapter, data: bytes, reason: str) -> None:
    with pytest.raises(BadFile, match=reason):
        adapter.events_of(data)


@pytest.mark.parametrize(
    "path", ["aurora/central_beds_update_file.json", "symology/brent_GetRequestResult.xml"]
)
def test_real_vendor_payloads_where_a_csv_was_expected(adapter, path: str) -> None:
    # Real file-drop/vendor bodies (Aurora JSON event, Symology XML) are not CSV: refused.
    data = (VENDOR / path).read_bytes()
    with pytest.raises(BadFile):
        adapter.events_of(data if data.endswith(b"\n") else data + b"\n")


async def test_triage_archives_good_and_quarantines_bad(adapter, tmp_path: Path) -> None:
    inbound = tmp_path / "inbound"
    since = datetime.now(UTC) - timedelta(seconds=1)
    await adapter.poll_changes(since)  # creates the folders
    (inbound / "COMPLETIONS_1.csv").write_bytes(QUIRKY)
    (inbound / "COMPLETIONS_2.csv").write_bytes(HTML)
    (inbound / "COMPLETIONS_3.csv").write_bytes(QUIRKY[:-30])
    (inbound / "notes.txt").write_bytes(b"hello\n")
    (inbound / ".COMPLETIONS_4.csv.part").write_bytes(b"uploading")
    page = await adapter.poll_changes(since)
    (inbound / "COMPLETIONS_1_resend.csv").write_bytes(QUIRKY)
    again = await adapter.poll_changes(since)
    assert len(page.events) == 2 and {e.external_event_id for e in again.events} == {
        e.external_event_id for e in page.events
    }
    reasons = {n.file: n.reason for n in page.quarantined + again.quarantined}
    assert reasons["COMPLETIONS_2.csv"].startswith("an HTML page")
    assert reasons["COMPLETIONS_3.csv"].startswith("truncated")
    assert reasons["notes.txt"] == "not an ACK or status file"
    assert reasons["COMPLETIONS_1_resend.csv"].startswith("duplicate of ")
    assert sorted(p.name for p in inbound.iterdir()) == [".COMPLETIONS_4.csv.part"]
    quarantine = sorted(p.name for p in (tmp_path / "quarantine").iterdir())
    assert len(quarantine) == 8 and sum(n.endswith(".reason.txt") for n in quarantine) == 4
    [day] = (tmp_path / "archive").iterdir()  # one folder per UTC day taken
    assert len(list(day.iterdir())) == 1
    later = await adapter.poll_changes(page.next_watermark + timedelta(seconds=1))
    assert later.events == []  # the watermark moves past archived files


async def test_an_unsafe_inbound_name_is_quarantined_under_a_safe_one(adapter, tmp_path):
    await adapter.poll_changes(datetime.now(UTC))
    (tmp_path / "inbound" / "COMPLETIONS $(rm -rf).csv").write_bytes(QUIRKY)
    page = await adapter.poll_changes(datetime.now(UTC))
    [note] = page.quarantined
    assert note.reason == "unsafe file name" and note.file.startswith("unsafe-name-")


async def test_archived_files_are_parsed_once_and_take_ids_the_ledger_learns_later(
    adapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    await adapter.poll_changes(since)  # creates the folders
    (tmp_path / "inbound" / "COMPLETIONS_1.csv").write_bytes(QUIRKY)
    reads: list[tuple[str, str]] = []
    read = adapter.drop.read

    async def counted(folder: str, name: str) -> bytes | None:
        reads.append((folder, name))
        return await read(folder, name)

    monkeypatch.setattr(adapter.drop, "read", counted)
    first = await adapter.poll_changes(since)
    assert [e.external_id for e in first.events] == ["00560250", "00560251"]  # contractor's
    # Another worker's batch carried h-1: its ledger entry appears after the file was parsed.
    entry = LedgerEntry(batch="SR_20260203_0001.csv", state=SENT, rows={"h-1": 3})
    (tmp_path / LEDGER / entry.key).write_bytes(entry.dumps())
    second = await adapter.poll_changes(since)
    assert [e.external_id for e in second.events] == [entry.external_id("h-1"), "00560251"]
    assert [e.external_event_id for e in second.events] == [
        e.external_event_id for e in first.events
    ]
    folders = [f.partition("/")[0] for f, _ in reads]  # archive/<day> is archive
    assert folders.count(ARCHIVE) == 0  # parsed at triage, never read again
    assert folders.count(INBOUND) == 1


async def test_a_row_the_page_repeats_is_one_event_built_once(adapter, tmp_path, monkeypatch):
    # Each file repeats the window's rows below its new one: the page holds every row once,
    # at the line of the last file that carried it, and builds only those events.
    from hub.adapters import DepartmentEvent

    since = datetime.now(UTC) - timedelta(seconds=1)
    await adapter.poll_changes(since)  # creates the folders
    header = b"CompletedAt,Status,CaseRef,ContractorRef,PhotoUrl,ReasonCode,Notes,Crew"
    rows = [f"0{d}/02/2026 08:00,COLLECTED,h-{d},,,,,7".encode() for d in range(1, 5)]
    for n in range(1, 4):  # file n: its new row, then the rows of the files before it
        window = [header, rows[n], *reversed(rows[:n]), b""]
        (tmp_path / "inbound" / f"COMPLETIONS_{n}.csv").write_bytes(b"\r\n".join(window))
    copies: list[int] = []
    model_copy = DepartmentEvent.model_copy

    def counted(self, *args, **kwargs):
        copies.append(1)
        return model_copy(self, *args, **kwargs)

    monkeypatch.setattr(DepartmentEvent, "model_copy", counted)
    page = await adapter.poll_changes(since)
    lines = {e.hub_reference: e.sequence.rsplit(":", 1)[1] for e in page.events}
    assert lines == {"h-1": "000005", "h-2": "000004", "h-3": "000003", "h-4": "000002"}
    assert len(copies) <= len(page.events) == 4  # not one per repeat at a new line


async def test_an_ack_before_the_batch_is_marked_sent_takes_the_batch_s_id(adapter, tmp_path):
    # The contractor can take a batch and ACK it before the hub has written its ledger
    # entry SENT (the entry is PENDING from before the file was written): the ACK and
    # every later row of the case carry one id, the batch's, which the delivery records.
    since = datetime.now(UTC) - timedelta(seconds=1)
    await adapter.poll_changes(since)  # creates the folders
    entry = LedgerEntry(batch="WO_20260203_0930_x.csv", state=PENDING, rows={"h-1": 1})
    (tmp_path / LEDGER / entry.key).write_bytes(entry.dumps())
    header = b"CompletedAt,Status,CaseRef,ContractorRef,PhotoUrl,ReasonCode,Notes,Crew"
    ack = b"03/02/2026 09:15,ACK,h-1,00560250,,,,7"
    (tmp_path / "inbound" / "ACK_WO_20260203_0930_x.csv").write_bytes(
        b"\r\n".join([header, ack, b""])
    )
    [acked] = (await adapter.poll_changes(since)).events
    entry.state = SENT
    (tmp_path / LEDGER / entry.key).write_bytes(entry.dumps())
    done = b"03/02/2026 10:15,COLLECTED,h-1,00560250,,,,7"
    (tmp_path / "inbound" / "COMPLETIONS_1.csv").write_bytes(b"\r\n".join([header, done, b""]))
    later = (await adapter.poll_changes(since)).events
    assert acked.external_id == entry.external_id("h-1")
    assert {e.external_id for e in later} == {entry.external_id("h-1")}
