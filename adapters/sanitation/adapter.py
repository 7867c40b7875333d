"""Sanitation department: a hauling contractor that only exchanges CSV files.

Outbound, per-case ``create`` calls are group-committed into batch files: concurrent
creates in one worker join the open batch, which is sealed when it holds
``batch_max_rows`` or ``batch_max_wait_seconds`` has passed; every caller returns only
after its row is in a batch file that is written, fsynced, renamed into ``outbound/`` and
recorded as ``sent`` in the ledger. Idempotency: the ledger (on the drop, shared by all
workers) says which hub ids went out in which batch; ``find_by_reference`` answers from
it, so a retry after a crash adopts the row instead of sending it again.

Inbound, ``poll_changes`` triages ``inbound/`` (good files to ``archive/<day>/``, bad ones
to ``quarantine/`` with a reason) and turns the rows of archived files into events.

Years of work orders: a process keeps the young ledger (batches not yet folded into
``index/``, see index.py), the hub ids its status files mention until they are closed and
idle, and a few parsed files — never one entry per work order ever sent. Polls list only
the archive day folders they read. See docs/adapters/sanitation.md and
docs/decisions/0009-file-drop-retention.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, model_validator

from hub.adapters import (
    Adapter,
    AdapterConfig,
    AuthFailed,
    Capability,
    DeliveryError,
    DepartmentEvent,
    ExternalRef,
    OutboundWorkOrder,
    Permanent,
    RejectedInput,
    StatusPage,
    Transient,
    UnknownOutcome,
)
from hub.mapping import DepartmentMapping, UnmappedStatus, load_mappings
from hub.mapping.schema import CsvLayout
from hub.model import Attachment, CaseStatus

from .drops import DropLocation, LocalDirectory, Sftp, UnsafeName, safe_name
from .files import (
    ABANDONED,
    ARCHIVE,
    INBOUND,
    INDEX,
    LEDGER,
    NESTED,
    OUTBOUND,
    PENDING,
    QUARANTINE,
    SENT,
    SIDECAR,
    TAKEN,
    LedgerEntry,
    batch_file_name,
    nested,
    render_csv,
    sha256,
    sidecar_text,
)
from .index import LedgerIndex
from .parse import BadFile, StatusRow, parse_datetime, parse_status_file

log = logging.getLogger(__name__)
ACK_PATTERN = "ACK_*.csv"
STAMP = "%Y%m%dT%H%M%S%fZ"  # archive/quarantine name prefix: when the hub took the file
_RANK = {SENT: 0, PENDING: 1, ABANDONED: 2}
_CLOSED = 3  # _rank of a status that closes the work order
# Rows of archived files kept parsed (1-2.5 kB each): a poll's overlap holds a few files.
PARSED_ROWS_KEPT = 10_000
# Rows turned into events, by content (a window repeats its rows file after file).
ROW_EVENTS_KEPT = 10_000
_MEANING = ("status", "closure_code", "note", "media_url")  # a row's event id fingerprint
COMPACT_BATCHES = 2_000  # ledger entries folded per compaction run (keeps one run short)
DAYS_LISTED_ONE_BY_ONE = 62  # a longer poll lists archive/ for the day folders that exist


class SanitationConfig(AdapterConfig):
    drop: Literal["local", "sftp"] = Field(default="local", description="where the drop is")
    path: str = Field(description="drop root: a local directory, or a directory on the server")
    host: str | None = Field(default=None, description="SFTP server")
    port: int = Field(default=22, ge=1, le=65535)
    username: str | None = Field(default=None, description="SFTP account")
    password: SecretStr | None = Field(default=None, description="from {env:} or {file:} only")
    private_key: SecretStr | None = Field(default=None, description="OpenSSH/PEM key text")
    passphrase: SecretStr | None = Field(default=None, description="of the private key")
    host_key: str | None = Field(default=None, description="server public key line")
    known_hosts: str | None = Field(default=None, description="known_hosts file path")
    mapping: str = Field(default="sanitation", description="mapping file's department")
    mappings_dir: str | None = Field(default=None, description="default: $HUB_MAPPINGS_DIR")
    batch_max_rows: int = Field(default=500, ge=1, le=100_000)
    batch_max_wait_seconds: float = Field(default=1.0, ge=0.0, le=3600.0)
    pending_grace_seconds: float = Field(
        default=60.0, gt=0, description="a pending batch older than this was abandoned"
    )
    ledger_compact_after_seconds: float = Field(
        default=86_400.0, ge=0, description="settled ledger entries older than this move to index/"
    )
    maintenance_every_seconds: float = Field(
        default=3_600.0, ge=0, description="how often a poll compacts the ledger (per process)"
    )
    duplicate_window_days: int = Field(
        default=2, ge=1, le=31, description="UTC days of archive/ an inbound file is compared with"
    )
    poll_page_rows: int = Field(
        default=20_000, ge=1, description="rows of archived files per status page"
    )
    known_refs_max: int = Field(
        default=50_000, ge=1, description="hub ids (from status files) a process keeps in memory"
    )
    closed_idle_seconds: float = Field(
        default=10_800.0, ge=0, description="a closed work order unnamed this long is forgotten"
    )

    @model_validator(mode="after")
    def _sftp_needs(self) -> SanitationConfig:
        if self.drop != "sftp":
            return self
        missing = [n for n in ("host", "username") if not getattr(self, n)]
        if not (self.password or self.private_key):
            missing.append("password or private_key")
        if not (self.host_key or self.known_hosts):
            missing.append("host_key or known_hosts (the server's key is always verified)")
        if missing:
            raise ValueError(f"drop sftp needs {', '.join(missing)}")
        return self


class QuarantineNote(RejectedInput):
    """A bad inbound file, moved to ``quarantine/`` as `quarantined_as` (next to its
    ``.reason.txt``). `source` is the file's (safe) name, `digest` its sha256."""

    quarantined_as: str

    @property
    def file(self) -> str:
        return self.source

    @property
    def sha256(self) -> str | None:
        return self.digest


class FileStatusPage(StatusPage):
    """A page whose `rejected` inputs are the files quarantined by this poll's triage."""

    @model_validator(mode="before")
    @classmethod
    def _quarantined_are_rejected(cls, data: Any) -> Any:
        """`quarantined=` as a constructor argument still works (it is `rejected`)."""
        if isinstance(data, dict) and "quarantined" in data:
            data = dict(data)
            data["rejected"] = [*data.get("rejected", ()), *data.pop("quarantined")]
        return data

    @property
    def quarantined(self) -> list[QuarantineNote]:
        return [r for r in self.rejected if isinstance(r, QuarantineNote)]


@dataclass
class _Ref:
    """A hub id a status file named: its external id (None: the ledger had no sent row
    for it when looked up) and whether the latest row closed it."""

    external_id: str | None
    touched: float = field(default_factory=time.monotonic)
    closed: bool = False


@dataclass
class _Batch:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: asyncio.Future[LedgerEntry] | None = None
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None


class SanitationAdapter(Adapter):
    name = "sanitation"
    transport = "file"
    config_model = SanitationConfig
    description = "Sanitation contractor: CSV batch files over a local directory or SFTP"
    capabilities = frozenset(
        {
            Capability.CREATE,
            Capability.FIND_BY_REFERENCE,
            Capability.STATUS_POLL,
            Capability.FILE_EXCHANGE,
        }
    )

    def __init__(self, config: SanitationConfig, *, department: str | None = None) -> None:
        super().__init__(config, department=department)
        self.config: SanitationConfig = config
        self.drop: DropLocation = _make_drop(config)
        self.worker = f"{os.uname().nodename}:{os.getpid()}"
        self._open: _Batch | None = None
        self._ready_loop: asyncio.AbstractEventLoop | None = None
        # What a process remembers, each bounded (docs/decisions/0009):
        self._entries: dict[str, LedgerEntry] = {}  # ledger/ file → entry (young batches)
        self._by_hub: dict[str, str] = {}  # hub id → ledger file of its best young entry
        self._refs: OrderedDict[str, _Ref] = OrderedDict()  # ids in status files, LRU
        # archive name → its rows (None: it no longer parses), least recently used first
        self._parsed: OrderedDict[str, list[_FileRow] | None] = OrderedDict()
        self._parsed_rows = 0
        self._row_events: OrderedDict[tuple[str, ...], tuple[DepartmentEvent, str]] = OrderedDict()
        self.index = LedgerIndex(self.drop)  # settled batches: read on a miss, not kept
        self._made: set[str] = set()  # archive day folders known to exist (recent ones)
        self._archive_flat_checked = False
        self._maintained_at = float("-inf")

    # -- the mapping ---------------------------------------------------------------

    @cached_property
    def mapping(self) -> DepartmentMapping:
        directory = Path(self.config.mappings_dir) if self.config.mappings_dir else None
        return load_mappings(directory).departments[self.config.mapping]

    def _layout(self, which: str) -> CsvLayout:
        layout = getattr(self.mapping.file_layout, which, None) if self.mapping else None
        if layout is None:
            raise Permanent(f"mapping {self.config.mapping}: no file_layout.{which}")
        return layout

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.mapping.timezone)

    @cached_property
    def service_types(self) -> frozenset[str]:
        return frozenset(r.work_order_type for r in self.mapping.routes if r.work_order_type)

    def status_codes(self) -> set[str]:
        return set(self.mapping.statuses)

    async def aclose(self) -> None:
        await self.drop.aclose()

    async def _ready(self) -> None:
        loop = asyncio.get_running_loop()
        if self._ready_loop is not loop:
            await self.drop.ensure_folders()
            self._ready_loop = loop

    # -- outbound: create joins a batch --------------------------------------------

    async def create(self, order: OutboundWorkOrder) -> ExternalRef:
        row = self._row(order)
        await self._ready()
        known = self._known_external(order.hub_id)
        if known is not None:  # re-run of a delivered case: send nothing
            return ExternalRef(external_id=known, hub_reference=order.hub_id)
        batch = self._join(order.hub_id, row)
        assert batch.done is not None
        entry = await asyncio.shield(batch.done)
        return self._ref(entry, order.hub_id)

    def _row(self, order: OutboundWorkOrder) -> dict[str, Any]:
        layout = self._layout("work_orders")
        if order.work_order_type not in self.service_types:
            raise Permanent(
                f"{self.department}: service type {order.work_order_type!r} is not one the"
                f" contractor takes ({', '.join(sorted(self.service_types))})"
            )
        reference = layout.roles.get("reference", "CaseRef")
        row = dict(order.payload)
        row[reference] = order.hub_id  # every row carries the hub case id, whatever the payload
        row.setdefault("ServiceType", order.work_order_type)
        return row

    def _join(self, hub_id: str, row: dict[str, Any]) -> _Batch:
        loop = asyncio.get_running_loop()
        batch = self._open
        if batch is None or batch.done is None or batch.done.get_loop() is not loop:
            batch = self._open = _Batch(done=loop.create_future())
            batch.timer = loop.call_later(self.config.batch_max_wait_seconds, self._seal, batch)
        batch.rows.setdefault(hub_id, row)  # the same case twice in one batch: one row
        if len(batch.rows) >= self.config.batch_max_rows:
            self._seal(batch)
        return batch

    def _seal(self, batch: _Batch) -> None:
        if self._open is batch:
            self._open = None
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
            batch.task = asyncio.ensure_future(self._flush(batch))

    async def _flush(self, batch: _Batch) -> None:
        assert batch.done is not None
        try:
            batch.done.set_result(await self._write_batch(batch.rows))
        except BaseException as error:  # every waiter gets the same classified error
            batch.done.set_exception(error)
            batch.done.exception()  # retrieved: callers may all have been cancelled

    async def _write_batch(self, rows: dict[str, dict[str, Any]]) -> LedgerEntry:
        layout = self._layout("work_orders")
        now = datetime.now(UTC)
        name = batch_file_name(layout, now.astimezone(self.zone), _batch_id(now))
        data = render_csv(layout, list(rows.values()))
        entry = LedgerEntry(
            batch=name,
            state=PENDING,
            rows={hub_id: i for i, hub_id in enumerate(rows, start=1)},
            sha256=sha256(data),
            worker=self.worker,
        )
        await self._save(entry)  # intent first: a crash after this is resolvable
        try:
            await self.drop.write_atomic(OUTBOUND, name, data)
        except AuthFailed:
            raise
        except DeliveryError as error:
            await self._abandon_if_absent(entry, error)
        try:
            sidecar = sidecar_text(name, data, len(rows))
            await self.drop.write_atomic(OUTBOUND, name + SIDECAR, sidecar)
            entry.state = SENT
            await self._save(entry)
        except DeliveryError as error:  # the batch file is there: a lookup rolls forward
            raise UnknownOutcome(f"{self.department}: batch {name} written, {error}") from None
        return entry

    async def _abandon_if_absent(self, entry: LedgerEntry, error: DeliveryError) -> None:
        """The batch write failed: if the file is certainly not there, nothing was sent."""
        try:
            present = entry.batch in await self.drop.list(OUTBOUND)
        except DeliveryError:
            present = True  # cannot tell
        if present:
            raise UnknownOutcome(f"{self.department}: batch {entry.batch}: {error}") from None
        entry.state = ABANDONED
        with contextlib.suppress(DeliveryError):
            await self._save(entry)
        raise Transient(f"{self.department}: batch not written ({error})") from None

    async def _save(self, entry: LedgerEntry) -> None:
        await self.drop.write_atomic(LEDGER, entry.key, entry.dumps())
        self._remember(entry)

    def _ref(self, entry: LedgerEntry, hub_id: str) -> ExternalRef:
        return ExternalRef(external_id=entry.external_id(hub_id), hub_reference=hub_id)

    # -- the ledger ------------------------------------------------------------------

    def _remember(self, entry: LedgerEntry) -> None:
        self._entries[entry.key] = entry
        for hub_id in entry.rows:
            current = self._entries.get(self._by_hub.get(hub_id, ""))
            if current is None or _RANK[entry.state] <= _RANK[current.state]:
                self._by_hub[hub_id] = entry.key
            ref = self._refs.get(hub_id)
            if ref is not None and entry.state == SENT:
                ref.external_id = entry.external_id(hub_id)  # a miss cached earlier, now sent

    def _forget(self, key: str) -> None:
        """A young entry folded into index/ (by any worker): lookups go there now."""
        entry = self._entries.pop(key, None)
        for hub_id in entry.rows if entry else ():
            if self._by_hub.get(hub_id) == key:
                del self._by_hub[hub_id]

    def _known(self, hub_id: str) -> LedgerEntry | None:
        return self._entries.get(self._by_hub.get(hub_id, ""))

    def _known_external(self, hub_id: str, *, pending: bool = False) -> str | None:
        """The external id this process knows without reading the drop (None: unknown);
        `pending`: a batch not yet written SENT counts too."""
        entry = self._known(hub_id)
        if entry is not None and entry.state in ((SENT, PENDING) if pending else (SENT,)):
            return entry.external_id(hub_id)
        ref = self._refs.get(hub_id)
        return ref.external_id if ref is not None else None

    async def _refresh(self) -> None:
        """Read young ledger entries this process has not seen final (other workers'
        batches); forget those that left ledger/ (folded into index/)."""
        before = set(self._entries)  # entries saved while listing are not "gone"
        keys = [k for k in await self.drop.list(LEDGER) if k.endswith(".json")]
        for gone in before.difference(keys):
            self._forget(gone)
        for key in keys:
            cached = self._entries.get(key)
            if cached is not None and cached.state != PENDING:
                continue
            data = await self.drop.read(LEDGER, key)
            if data:
                with contextlib.suppress(ValueError, KeyError):
                    self._remember(LedgerEntry.loads(data))

    async def find_by_reference(self, hub_id: str) -> ExternalRef | None:
        await self._ready()
        external_id = await self._lookup(hub_id)
        if external_id is None:
            return None
        return ExternalRef(external_id=external_id, hub_reference=hub_id)

    async def _lookup(self, hub_id: str) -> str | None:
        """Young ledger in memory → index/ (settled batches) → young ledger re-read →
        index/ again: a batch folded between the first look and the re-read is in index/
        by then (entries leave ledger/ only after index/ holds their rows)."""
        known = self._known_external(hub_id)
        if known is not None:
            return known
        settled = (await self.index.lookup([hub_id])).get(hub_id)
        if settled is not None:
            return settled
        await self._refresh()
        entry = self._known(hub_id)
        if entry is not None and entry.state == PENDING:
            entry = await self._resolve(entry)
        if entry is not None and entry.state == SENT:
            return entry.external_id(hub_id)
        return (await self.index.lookup([hub_id])).get(hub_id)

    async def _resolve(self, entry: LedgerEntry) -> LedgerEntry:
        """A pending batch (its writer died or is still writing): roll forward or back."""
        outbound = await self.drop.list(OUTBOUND)
        # taken/ is the contractor's and only grows: ask for the one name, never list it.
        if entry.batch in outbound or await self.drop.exists(TAKEN, entry.batch):
            if entry.batch in outbound and entry.batch + SIDECAR not in outbound:
                await self._complete_sidecar(entry)
            entry.state = SENT
        elif datetime.now(UTC) - entry.created_at < timedelta(
            seconds=self.config.pending_grace_seconds
        ):
            raise Transient(f"{self.department}: batch {entry.batch} is still being written")
        else:
            for leftover in (n for n in outbound if n.startswith(f".{entry.batch}.")):
                await self.drop.remove(OUTBOUND, leftover)
            entry.state = ABANDONED
        await self._save(entry)
        return entry

    async def _complete_sidecar(self, entry: LedgerEntry) -> None:
        data = await self.drop.read(OUTBOUND, entry.batch)
        if data is None or sha256(data) != entry.sha256:
            return  # taken meanwhile, or not ours to vouch for
        sidecar = sidecar_text(entry.batch, data, len(entry.rows))
        await self.drop.write_atomic(OUTBOUND, entry.batch + SIDECAR, sidecar)

    # -- compaction: settled ledger entries into index/ ----------------------------------

    async def compact(self) -> int:
        """Fold settled ledger entries (sent or abandoned, older than
        ``ledger_compact_after_seconds``) into ``index/`` and remove their ``ledger/``
        files; returns how many left. Several workers may run it at once (index.py)."""
        await self._ready()
        await self._refresh()
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.config.ledger_compact_after_seconds)
        grace = timedelta(seconds=self.config.pending_grace_seconds)
        due = sorted((e for e in self._entries.values() if e.created_at <= cutoff),
                     key=lambda e: e.key)[:COMPACT_BATCHES]  # fmt: skip
        settled = []
        for entry in due:
            if entry.state == PENDING:
                if now - entry.created_at < grace:
                    continue  # its writer may still be at work
                entry = await self._resolve(entry)
            settled.append(entry)
        # Sorted by key, so a hub id in two sent batches keeps the later one, as in memory.
        refs = {h: e.external_id(h) for e in settled if e.state == SENT for h in e.rows}
        await self.index.add(refs)  # every row findable there before any ledger file goes
        removed = 0
        for entry in settled:
            if await self._unchanged(entry):
                await self.drop.remove(LEDGER, entry.key)
                self._forget(entry.key)
                removed += 1
        if removed:  # a dict keeps its largest table after deletes: copy to give it back
            self._entries, self._by_hub = dict(self._entries), dict(self._by_hub)
        return removed

    async def _unchanged(self, entry: LedgerEntry) -> bool:
        """The ledger file still says what was folded. A writer slower than the grace can
        turn `abandoned` into `sent` (decision 0006): then it stays, and is folded later."""
        data = await self.drop.read(LEDGER, entry.key)
        if data is None:
            return True  # another worker's compaction removed it
        try:
            current = LedgerEntry.loads(data)
        except (ValueError, KeyError):
            return False
        if current.state == entry.state:
            return True
        self._remember(current)
        return False

    async def _maintain(self) -> None:
        """Compaction from polls, at most every ``maintenance_every_seconds`` per process:
        the hub polls every department on a schedule, so no other scheduler is needed."""
        if time.monotonic() - self._maintained_at < self.config.maintenance_every_seconds:
            return
        self._maintained_at = time.monotonic()
        try:
            removed = await self.compact()
        except DeliveryError as error:  # the poll's events matter more; next run retries
            log.warning("%s: ledger compaction failed: %s", self.department, error)
            return
        if removed:
            log.info("%s: %d ledger entries folded into %s/", self.department, removed, INDEX)

    def footprint(self) -> dict[str, int]:
        """What this process holds in memory, each part bounded (decision 0009)."""
        return {
            "ledger_entries": len(self._entries),
            "ledger_hub_ids": len(self._by_hub),
            "known_refs": len(self._refs),
            "parsed_files": len(self._parsed),
            "parsed_rows": self._parsed_rows,
            "row_events": len(self._row_events),
            "index_rows_cached": self.index.cached_rows,
        }

    # -- inbound: triage, then events ------------------------------------------------

    async def poll_changes(self, since: datetime) -> FileStatusPage:
        await self._ready()
        await self._file_flat_archive()
        notes = await self.triage()
        await self._refresh()
        await self._maintain()
        self._drop_parsed_before(since)
        rows, last, more = await self._page(since)
        await self._learn(row.event.hub_reference for row in rows if row.event.hub_reference)
        # A row the page's files repeat is one event, at its last file's line: built once
        # here, not once per file (a contractor's window repeats most rows in every file).
        latest = {row.event.external_event_id: row for row in rows}
        events = [self._as_event(row) for row in latest.values()]
        ordered = sorted(events, key=lambda e: (e.sequence or "", e.external_event_id))
        self._note_closures(ordered)
        return FileStatusPage(
            events=ordered, next_watermark=last or since, more=more, rejected=notes
        )

    async def _page(self, since: datetime) -> tuple[list[_FileRow], datetime | None, bool]:
        """Rows of the files archived at or after `since`, oldest first, up to about
        ``poll_page_rows`` (a page ends between two archive times, past `since`, so the
        next page — from the last time, inclusive — always moves on)."""
        rows: list[_FileRow] = []
        last: datetime | None = None
        async with contextlib.aclosing(self._archived_since(since)) as names:
            async for name, stamp in names:
                full = len(rows) >= self.config.poll_page_rows
                if full and last is not None and since < last < stamp:
                    return rows, last, True
                parsed = await self._archived_rows(name)
                if parsed is None:
                    continue  # checked at triage; a later edit is skipped
                rows.extend(parsed)
                last = stamp
        return rows, last, False

    async def _archived_since(self, since: datetime) -> AsyncIterator[tuple[str, datetime]]:
        """Archive names taken at or after `since`, oldest first: only the day folders from
        since's day on are listed, however long the archive has grown."""
        for folder in await self._day_folders(since.astimezone(UTC).date()):
            for name in await self.drop.list(folder):
                stamp = _stamp_of(name)
                if stamp is not None and stamp >= since:
                    yield name, stamp

    async def _day_folders(self, first: date) -> list[str]:
        last = datetime.now(UTC).date() + timedelta(days=1)  # a worker whose clock is ahead
        if first > last:
            return []
        if (last - first).days <= DAYS_LISTED_ONE_BY_ONE:
            days = (first + timedelta(days=n) for n in range((last - first).days + 1))
            return [nested(ARCHIVE, f"{day:%Y%m%d}") for day in days]
        start = f"{first:%Y%m%d}"  # a long way back (reconciliation): the folders that exist
        existing = await self.drop.subfolders(ARCHIVE)
        return [nested(ARCHIVE, d) for d in existing if NESTED[ARCHIVE].match(d) and d >= start]

    async def _archived_rows(self, name: str) -> list[_FileRow] | None:
        """The rows of an archived file, parsed once per process: archive names carry
        the content's digest and are never rewritten, while overlapping polls (and the
        contractor's overlapping windows) would otherwise parse each file again and
        again. None: the file is gone or no longer parses."""
        if name in self._parsed:
            self._parsed.move_to_end(name)
            return self._parsed[name]
        data = await self.drop.read(_day_folder(name), name)
        try:
            rows = self._file_rows(data or b"")
        except BadFile:
            rows = None
        self._keep_parsed(name, rows)
        return rows

    def _keep_parsed(self, name: str, rows: list[_FileRow] | None) -> None:
        self._parsed[name] = rows
        self._parsed_rows += len(rows or ())
        # A page's files stay parsed: the next poll re-reads its overlap.
        kept = max(PARSED_ROWS_KEPT, self.config.poll_page_rows)
        while self._parsed_rows > kept and len(self._parsed) > 1:
            _, dropped = self._parsed.popitem(last=False)
            self._parsed_rows -= len(dropped or ())

    def _drop_parsed_before(self, since: datetime) -> None:
        """Files taken before `since` are not read by this poll, nor by the next status
        poll (its watermark only moves on): only a reconciliation reads that far back."""
        for name in [n for n in self._parsed if (_stamp_of(n) or since) < since]:
            self._parsed_rows -= len(self._parsed.pop(name) or ())

    async def _learn(self, hub_ids: Iterable[str]) -> None:
        """Know the external id of each hub id on the page — index/ is read once per
        bucket for the ids this process does not hold — and mark each one used."""
        wanted = set(hub_ids)
        missing = [h for h in wanted if h not in self._refs and self._known_external(h) is None]
        settled = await self.index.lookup(missing) if missing else {}
        now = time.monotonic()
        for hub_id in wanted:
            ref = self._refs.get(hub_id)
            if ref is None:
                known = self._known_external(hub_id) or settled.get(hub_id)
                ref = self._refs[hub_id] = _Ref(known)
            ref.touched = now
            self._refs.move_to_end(hub_id)

    def _note_closures(self, events: list[DepartmentEvent]) -> None:
        """The latest row of a hub id says whether its work order is closed. Closed ones
        that no file named for ``closed_idle_seconds`` are forgotten (the contractor's
        windows stop repeating them), and beyond ``known_refs_max`` the least used."""
        for event in events:  # in sequence order: a case's last row wins
            ref = self._refs.get(event.hub_reference or "")
            if ref is not None:
                ref.closed = self._rank(event.raw_code) == _CLOSED
        size = len(self._refs)
        idle_before = time.monotonic() - self.config.closed_idle_seconds
        for hub_id, ref in list(self._refs.items()):  # least recently used first
            if ref.touched > idle_before:
                break
            if ref.closed:
                del self._refs[hub_id]
        while len(self._refs) > self.config.known_refs_max:
            self._refs.popitem(last=False)
        if size - len(self._refs) > max(1024, len(self._refs)):  # give the table back
            self._refs = OrderedDict(self._refs)

    async def triage(self) -> list[QuarantineNote]:
        """Move every finished inbound file to archive/ or quarantine/ (with a reason)."""
        names = [n for n in await self.drop.list(INBOUND) if not n.startswith(".")]
        if not names:  # dot-names are still being uploaded
            return []
        archived = await self._recent_archive()
        notes = []
        for name in names:
            note = await self._triage_one(name, archived)
            if note is not None:
                notes.append(note)
        return notes

    async def _recent_archive(self) -> dict[str | None, str]:
        """Digest → archive name, over the last ``duplicate_window_days`` UTC days. An
        older file sent again is archived again: its rows are events the hub already
        holds (same external_event_id), so nothing applies twice."""
        today = datetime.now(UTC).date()
        archived: dict[str | None, str] = {}
        for back in range(self.config.duplicate_window_days):
            folder = nested(ARCHIVE, f"{today - timedelta(days=back):%Y%m%d}")
            archived.update({_digest_of(n): n for n in await self.drop.list(folder)})
        return archived

    async def _file_flat_archive(self) -> None:
        """Archives of adapter versions before day folders lie flat in archive/: move each
        to its day folder once (same name and bytes), so no poll lists them again."""
        if self._archive_flat_checked:
            return
        for name in await self.drop.list(ARCHIVE):
            if _stamp_of(name) is not None:
                await self._make(_day_folder(name))
                await self.drop.move(ARCHIVE, name, _day_folder(name), name)
        self._archive_flat_checked = True

    async def _make(self, folder: str) -> None:
        if folder not in self._made:
            await self.drop.ensure_folder(folder)
            if len(self._made) >= 64:  # day folders: only the last few are written to
                self._made.clear()
            self._made.add(folder)

    async def _triage_one(
        self, name: str, archived: dict[str | None, str]
    ) -> QuarantineNote | None:
        stamp = datetime.now(UTC).strftime(STAMP)
        try:
            safe_name(name)
        except UnsafeName:
            safe = "unsafe-name-" + hashlib.sha256(name.encode()).hexdigest()[:12]
            return await self._quarantine(
                name, safe, stamp, None, "unsafe_name", "unsafe file name"
            )
        if not self._expected(name):
            reason = "not an ACK or status file"
            return await self._quarantine(name, name, stamp, None, "unexpected_file", reason)
        data = await self.drop.read(INBOUND, name)
        if data is None:
            return None  # another worker took it
        digest = sha256(data)
        if digest[:16] in archived:
            reason = f"duplicate of {archived[digest[:16]]}"
            return await self._quarantine(name, name, stamp, data, "duplicate_file", reason)
        try:
            rows = self._file_rows(data)
        except BadFile as bad:
            return await self._quarantine(name, name, stamp, data, "bad_file", bad.reason)
        archive_name = f"{stamp}_{digest[:16]}_{name}"
        await self._make(_day_folder(archive_name))
        await self.drop.move(INBOUND, name, _day_folder(archive_name), archive_name)
        archived[digest[:16]] = archive_name
        self._keep_parsed(archive_name, rows)  # the poll that follows reads it at once
        return None

    def _expected(self, name: str) -> bool:
        pattern = self._layout("status_updates").filename
        upper = name.upper()
        return fnmatch.fnmatch(upper, ACK_PATTERN.upper()) or fnmatch.fnmatch(
            upper, pattern.upper()
        )

    async def _quarantine(
        self, name: str, safe: str, stamp: str, data: bytes | None, kind: str, reason: str
    ) -> QuarantineNote:
        """`data` None: the file was refused by its name, unread (no digest to give)."""
        digest = sha256(data) if data is not None else None
        target = f"{stamp}_{safe}"
        detail = f"reason: {reason}\noriginal: {safe}\nsha256: {digest or '-'}\nat: {stamp}\n"
        await self.drop.write_atomic(QUARANTINE, target + ".reason.txt", detail.encode())
        await self.drop.move(INBOUND, name, QUARANTINE, target)
        # INFO: the hub's status sync logs the WARNING for every rejected input.
        log.info("%s: quarantined inbound file %s as %s: %s", self.department, safe, target, reason)
        return QuarantineNote(
            department=self.department,
            source=safe,
            kind=kind,
            quarantined_as=target,
            reason=reason,
            digest=digest,
            at=datetime.now(UTC),
        )

    def events_of(self, data: bytes) -> list[DepartmentEvent]:
        """Every row of an ack/status file as an event; BadFile if any row is bad."""
        return [self._as_event(row) for row in self._file_rows(data)]

    def _file_rows(self, data: bytes) -> list[_FileRow]:
        layout = self._layout("status_updates")
        return [self._file_row(row, layout) for row in parse_status_file(data, layout)]

    def _external_id(self, hub_id: str, contractor_ref: str | None) -> str:
        """A row's work order: the ledger's id once this process knows the batch (a
        PENDING one too: the contractor can take the file and ACK it before the
        delivering process writes the entry SENT, and the contractor's reference then
        would link the work order to one id and every later row to another, their
        closures orphaned); else the contractor's. Deliveries still count only SENT."""
        return self._known_external(hub_id, pending=True) or contractor_ref or hub_id

    def _file_row(self, row: StatusRow, layout: CsvLayout) -> _FileRow:
        """The row's event and its place in this file. The contractor's overlapping
        windows repeat each row in file after file (at another line): a row seen before
        shares the event built the first time."""
        hub_id, code = row.get("reference"), row.get("status")
        when, contractor = row.get("occurred_at"), row.get("external_id")
        values = row.values
        key = (hub_id, code, when, contractor, *[values.get(r, "") for r in _MEANING[1:]])
        known = self._row_events.get(key)
        if known is None:
            external_id = self._external_id(hub_id, contractor or None)
            known = self._row_events[key] = self._new_event(row, layout, external_id)
            while len(self._row_events) > ROW_EVENTS_KEPT:
                self._row_events.popitem(last=False)
        else:
            self._row_events.move_to_end(key)
        event, prefix = known
        return _FileRow(event, f"{prefix}{row.line:06d}", contractor or None)

    def _as_event(self, row: _FileRow) -> DepartmentEvent:
        """The row as an event: its file's line in the sequence (its order within a
        second) and what this process knows now of its external id."""
        event = row.event
        external_id = self._external_id(event.hub_reference or "", row.contractor)
        if event.sequence == row.sequence and event.external_id == external_id:
            return event
        return event.model_copy(update={"sequence": row.sequence, "external_id": external_id})

    def _new_event(
        self, row: StatusRow, layout: CsvLayout, external_id: str
    ) -> tuple[DepartmentEvent, str]:
        """The event of a row and its sequence's prefix (all of it but the line)."""
        hub_id, code = row.get("reference"), row.get("status")
        when = row.get("occurred_at")
        if not when:
            raise BadFile(f"line {row.line}: no date")
        occurred = parse_datetime(when, layout, self.zone)
        contractor = row.get("external_id")
        # Overlapping windows repeat rows: the id is the row's meaning, not its position.
        meaning = "|".join(row.get(role) for role in _MEANING)
        fingerprint = hashlib.md5(meaning.encode(), usedforsecurity=False).hexdigest()[:10]
        stamp = occurred.strftime("%Y%m%dT%H%M%SZ")
        prefix = f"{stamp}:{self._rank(code)}:"
        event = DepartmentEvent(
            department=self.department,
            external_event_id=f"{hub_id}:{code}:{stamp}:{fingerprint}",
            external_id=external_id,
            hub_reference=hub_id,
            raw_code=code,
            raw_text=f"{code} (contractor ref {contractor})" if contractor else code,
            occurred_at=occurred,
            sequence=f"{prefix}{row.line:06d}",
            closure_code=row.get("closure_code") or None,
            closure_text=row.get("note") or None,
            evidence=_photo(row.get("media_url")),
        )
        return event, prefix

    def _rank(self, code: str) -> int:
        """Within one timestamp a later lifecycle stage sorts later (ACK < DISPATCHED < done):
        the contractor's dates have no sub-second order, rows of two files tie."""
        try:
            mapped = self.mapping.map_status_in(code)
        except UnmappedStatus:
            return 0
        if mapped is None:
            return 0
        if mapped.status.is_final:
            return _CLOSED
        return 2 if mapped.status is CaseStatus.ONSITE else 1


class _FileRow(NamedTuple):
    """A row of a status file: the event of its meaning (shared by every file that
    repeats the row), this file's sequence for it and the contractor's ref."""

    event: DepartmentEvent
    sequence: str
    contractor: str | None


def _make_drop(config: SanitationConfig) -> DropLocation:
    if config.drop == "local":
        return LocalDirectory(config.path)
    assert config.host and config.username
    return Sftp(
        host=config.host,
        port=config.port,
        username=config.username,
        root=config.path,
        password=config.password.get_secret_value() if config.password else None,
        private_key=config.private_key.get_secret_value() if config.private_key else None,
        passphrase=config.passphrase.get_secret_value() if config.passphrase else None,
        host_key=config.host_key,
        known_hosts=config.known_hosts,
        timeout=config.timeout_seconds,
    )


def _batch_id(now: datetime) -> str:
    return f"{now:%S%f}{uuid.uuid4().hex[:6]}"


def _stamp_of(name: str) -> datetime | None:
    try:
        return datetime.strptime(name.split("_", 1)[0], STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def _day_folder(archive_name: str) -> str:
    """``archive/<yyyymmdd>``: the UTC day the hub took the file (its name's prefix)."""
    return nested(ARCHIVE, archive_name[:8])


def _digest_of(name: str) -> str | None:
    parts = name.split("_", 2)
    return parts[1] if len(parts) == 3 else None


def _photo(reference: str) -> list[Attachment]:
    if not reference:
        return []
    name = urlparse(reference).path.rpartition("/")[2] or reference
    kind = "image/jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "application/octet-stream"
    return [Attachment(url=reference, content_type=kind, filename=name)]
