"""Sanitation department: a hauling contractor that only exchanges CSV files.

Outbound, per-case ``create`` calls are group-committed into batch files: concurrent
creates in one worker join the open batch, which is sealed when it holds
``batch_max_rows`` or ``batch_max_wait_seconds`` has passed; every caller returns only
after its row is in a batch file that is written, fsynced, renamed into ``outbound/`` and
recorded as ``sent`` in the ledger. Idempotency: the ledger (on the drop, shared by all
workers) says which hub ids went out in which batch; ``find_by_reference`` answers from
it, so a retry after a crash adopts the row instead of sending it again.

Inbound, ``poll_changes`` triages ``inbound/`` (good files to ``archive/``, bad ones to
``quarantine/`` with a reason) and turns the rows of archived files into events.
See docs/adapters/sanitation.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
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
    LEDGER,
    OUTBOUND,
    PENDING,
    QUARANTINE,
    SENT,
    SIDECAR,
    TAKEN,
    LedgerEntry,
    batch_file_name,
    render_csv,
    sha256,
    sidecar_text,
)
from .parse import BadFile, StatusRow, parse_datetime, parse_status_file

log = logging.getLogger(__name__)
ACK_PATTERN = "ACK_*.csv"
STAMP = "%Y%m%dT%H%M%S%fZ"  # archive/quarantine name prefix: when the hub took the file
_RANK = {SENT: 0, PENDING: 1, ABANDONED: 2}
PARSED_ROWS_KEPT = 100_000  # rows of archived files kept parsed (each file repeats a window)
_Row = tuple[str | None, DepartmentEvent]  # (contractor's ref, the row's event)


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
        self._entries: dict[str, LedgerEntry] = {}  # ledger file → entry
        self._by_hub: dict[str, str] = {}  # hub id → ledger file of its best entry
        self._parsed: OrderedDict[str, list[_Row] | None] = OrderedDict()  # archive name →
        self._parsed_rows = 0

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
        known = self._known(order.hub_id)
        if known is not None and known.state == SENT:
            return self._ref(known, order.hub_id)  # re-run of a delivered case: send nothing
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

    def _known(self, hub_id: str) -> LedgerEntry | None:
        return self._entries.get(self._by_hub.get(hub_id, ""))

    async def _refresh(self) -> None:
        """Read ledger entries this process has not seen final (other workers' batches)."""
        for key in await self.drop.list(LEDGER):
            cached = self._entries.get(key)
            if not key.endswith(".json") or (cached and cached.state != PENDING):
                continue
            data = await self.drop.read(LEDGER, key)
            if data:
                with contextlib.suppress(ValueError, KeyError):
                    self._remember(LedgerEntry.loads(data))

    async def find_by_reference(self, hub_id: str) -> ExternalRef | None:
        await self._ready()
        entry = self._known(hub_id)
        if entry is None or entry.state != SENT:
            await self._refresh()
            entry = self._known(hub_id)
        if entry is not None and entry.state == PENDING:
            entry = await self._resolve(entry)
        if entry is None or entry.state != SENT:
            return None
        return self._ref(entry, hub_id)

    async def _resolve(self, entry: LedgerEntry) -> LedgerEntry:
        """A pending batch (its writer died or is still writing): roll forward or back."""
        outbound = await self.drop.list(OUTBOUND)
        if entry.batch in outbound or entry.batch in await self.drop.list(TAKEN):
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

    # -- inbound: triage, then events ------------------------------------------------

    async def poll_changes(self, since: datetime) -> FileStatusPage:
        await self._ready()
        notes = await self.triage()
        await self._refresh()
        stamps = []
        events: dict[str, DepartmentEvent] = {}
        for name in await self.drop.list(ARCHIVE):
            stamp = _stamp_of(name)
            if stamp is None or stamp < since:
                continue
            rows = await self._archived_rows(name)
            if rows is None:
                continue  # checked at triage; a later edit is skipped
            for contractor_ref, event in rows:
                external_id = self._external_id(event.hub_reference or "", contractor_ref)
                if external_id != event.external_id:  # the ledger learned it since
                    event = event.model_copy(update={"external_id": external_id})
                events[event.external_event_id] = event
            stamps.append(stamp)
        ordered = sorted(events.values(), key=lambda e: (e.sequence or "", e.external_event_id))
        return FileStatusPage(
            events=ordered, next_watermark=max(stamps, default=since), rejected=notes
        )

    async def _archived_rows(self, name: str) -> list[_Row] | None:
        """The events of an archived file, parsed once per process: archive names carry
        the content's digest and are never rewritten, while overlapping polls (and the
        contractor's overlapping windows) would otherwise parse each file again and
        again. None: the file is gone or no longer parses."""
        if name in self._parsed:
            self._parsed.move_to_end(name)
            return self._parsed[name]
        data = await self.drop.read(ARCHIVE, name)
        try:
            rows = self._rows_of(data or b"")
        except BadFile:
            rows = None
        self._keep_parsed(name, rows)
        return rows

    def _keep_parsed(self, name: str, rows: list[_Row] | None) -> None:
        self._parsed[name] = rows
        self._parsed_rows += len(rows or ())
        while self._parsed_rows > PARSED_ROWS_KEPT and len(self._parsed) > 1:
            _, dropped = self._parsed.popitem(last=False)
            self._parsed_rows -= len(dropped or ())

    async def triage(self) -> list[QuarantineNote]:
        """Move every finished inbound file to archive/ or quarantine/ (with a reason)."""
        archived = {_digest_of(n): n for n in await self.drop.list(ARCHIVE)}
        notes = []
        for name in await self.drop.list(INBOUND):
            if name.startswith("."):
                continue  # still being uploaded (dot-name convention)
            note = await self._triage_one(name, archived)
            if note is not None:
                notes.append(note)
        return notes

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
            rows = self._rows_of(data)
        except BadFile as bad:
            return await self._quarantine(name, name, stamp, data, "bad_file", bad.reason)
        archive_name = f"{stamp}_{digest[:16]}_{name}"
        await self.drop.move(INBOUND, name, ARCHIVE, archive_name)
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
        return [event for _, event in self._rows_of(data)]

    def _rows_of(self, data: bytes) -> list[_Row]:
        layout = self._layout("status_updates")
        return [
            (row.get("external_id") or None, self._event(row, layout))
            for row in parse_status_file(data, layout)
        ]

    def _external_id(self, hub_id: str, contractor_ref: str | None) -> str:
        """The ledger's id once this process knows the batch; else the contractor's."""
        known = self._known(hub_id)
        return known.external_id(hub_id) if known else contractor_ref or hub_id

    def _event(self, row: StatusRow, layout: CsvLayout) -> DepartmentEvent:
        hub_id, code = row.get("reference"), row.get("status")
        when = row.get("occurred_at")
        if not when:
            raise BadFile(f"line {row.line}: no date")
        occurred = parse_datetime(when, layout, self.zone)
        contractor = row.get("external_id")
        external_id = self._external_id(hub_id, contractor or None)
        # Overlapping windows repeat rows: the id is the row's meaning, not its position.
        meaning = "|".join((code, row.get("closure_code"), row.get("note"), row.get("media_url")))
        fingerprint = hashlib.md5(meaning.encode(), usedforsecurity=False).hexdigest()[:10]
        stamp = occurred.strftime("%Y%m%dT%H%M%SZ")
        return DepartmentEvent(
            department=self.department,
            external_event_id=f"{hub_id}:{code}:{stamp}:{fingerprint}",
            external_id=external_id,
            hub_reference=hub_id,
            raw_code=code,
            raw_text=f"{code} (contractor ref {contractor})" if contractor else code,
            occurred_at=occurred,
            sequence=f"{stamp}:{self._rank(code)}:{row.line:06d}",
            closure_code=row.get("closure_code") or None,
            closure_text=row.get("note") or None,
            evidence=_photo(row.get("media_url")),
        )

    def _rank(self, code: str) -> int:
        """Within one timestamp a later lifecycle stage sorts later (ACK < DISPATCHED < done):
        the contractor's dates have no sub-second order, rows of two files tie."""
        try:
            mapped = self.mapping.map_status_in(code)
        except UnmappedStatus:
            return 0
        if mapped is None:
            return 0
        return 3 if mapped.status.is_final else 2 if mapped.status is CaseStatus.ONSITE else 1


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


def _digest_of(name: str) -> str | None:
    parts = name.split("_", 2)
    return parts[1] if len(parts) == 3 else None


def _photo(reference: str) -> list[Attachment]:
    if not reference:
        return []
    name = urlparse(reference).path.rpartition("/")[2] or reference
    kind = "image/jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "application/octet-stream"
    return [Attachment(url=reference, content_type=kind, filename=name)]
