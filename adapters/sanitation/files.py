"""Batch files and their bookkeeping: CSV rendering, checksums, the sent-ledger entry.

Pure functions (no I/O): the drop location does the writing. See docs/adapters/sanitation.md.

Drop folders (relative to the drop root, identical on a local directory and on SFTP):

- ``outbound/``   hub → contractor: ``WO_<stamp>_<batch>.csv`` plus a ``.sha256`` sidecar;
- ``taken/``      the contractor moves consumed batches here (never deletes them);
- ``inbound/``    contractor → hub: ``ACK_*.csv`` and status files;
- ``archive/<yyyymmdd>/`` good inbound files after triage, one folder per UTC day taken;
- ``quarantine/`` bad inbound files after triage, with a reason file;
- ``ledger/``     the hub's sent-ledger (one JSON per batch), shared by every worker;
- ``index/<bb>/`` the compacted ledger: settled batches' sent rows, bucketed by hub id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hub.mapping.schema import CsvLayout

OUTBOUND, TAKEN, INBOUND = "outbound", "taken", "inbound"
ARCHIVE, QUARANTINE, LEDGER, INDEX = "archive", "quarantine", "ledger", "index"
FOLDERS = (OUTBOUND, TAKEN, INBOUND, ARCHIVE, QUARANTINE, LEDGER, INDEX)
# The only sub-folders: one per UTC day under archive/, one per hub-id bucket under index/.
NESTED = {ARCHIVE: re.compile(r"^[0-9]{8}$"), INDEX: re.compile(r"^[0-9a-f]{2}$")}
SIDECAR = ".sha256"
PENDING, SENT, ABANDONED = "pending", "sent", "abandoned"
QUOTING = {"all": csv.QUOTE_ALL, "minimal": csv.QUOTE_MINIMAL, "nonnumeric": csv.QUOTE_NONNUMERIC}
_PLACEHOLDER = re.compile(r"\{timestamp:([^}]*)\}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def nested(parent: str, child: str) -> str:
    """``archive/20260203`` or ``index/a7``; ValueError for anything else."""
    pattern = NESTED.get(parent)
    if pattern is None or not pattern.match(child):
        raise ValueError(f"no sub-folder {child!r} under {parent!r}")
    return f"{parent}/{child}"


def bucket_of(hub_id: str) -> str:
    """The index bucket of a hub id: 256 buckets, uniform whatever the ids look like."""
    return hashlib.sha256(hub_id.encode()).hexdigest()[:2]


def batch_file_name(layout: CsvLayout, when: datetime, batch_id: str) -> str:
    """The layout's name (``WO_{timestamp:%Y%m%d_%H%M}.csv``) made unique per batch."""
    name = _PLACEHOLDER.sub(lambda m: when.strftime(m.group(1)), layout.filename)
    stem, dot, ext = name.rpartition(".")
    return f"{stem}_{batch_id}.{ext}" if dot else f"{name}_{batch_id}"


def cell(value: Any) -> str:
    """One CSV cell. Newlines become spaces: contractor importers split rows on them even
    inside quotes, and a split row would shift every column after it."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = ";".join(str(v) for v in value)
    if isinstance(value, float):
        value = f"{value:.6f}".rstrip("0").rstrip(".")
    return " ".join(str(value).splitlines())


def render_csv(layout: CsvLayout, rows: list[Mapping[str, Any]]) -> bytes:
    """The batch file in the contractor's layout: column order, quoting, encoding."""
    buffer = io.StringIO()
    writer = csv.writer(
        buffer,
        delimiter=layout.delimiter,
        quoting=QUOTING[layout.quoting],
        lineterminator=layout.line_terminator,
    )
    if layout.header:
        writer.writerow(layout.columns)
    for row in rows:
        writer.writerow([cell(row.get(column)) for column in layout.columns])
    # errors="replace": one emoji in a description must not block a whole batch.
    return buffer.getvalue().encode(layout.encoding, errors="replace")


def sidecar_text(name: str, data: bytes, rows: int) -> bytes:
    """``sha256sum`` format plus the row count: the contractor's completeness check."""
    return f"{sha256(data)}  {name}\nrows {rows}\n".encode("ascii")


def parse_sidecar(text: bytes) -> tuple[str, int] | None:
    try:
        first, second = text.decode("ascii").splitlines()[:2]
        return first.split()[0], int(second.split()[1])
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


@dataclass
class LedgerEntry:
    """One batch in the sent-ledger: which hub ids it carries and whether it went out.

    ``pending`` is written before the batch file, ``sent`` after its sidecar, so a crash
    leaves either a pending entry (resolved by looking at the drop) or a sent one.
    """

    batch: str  # the batch file name in outbound/
    state: str
    rows: dict[str, int]  # hub id → row number (1-based)
    sha256: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    worker: str = ""

    @property
    def key(self) -> str:
        return self.batch.rpartition(".")[0] + ".json"

    def external_id(self, hub_id: str) -> str:
        return f"{self.batch.rpartition('.')[0]}#{self.rows[hub_id]:04d}"

    def dumps(self) -> bytes:
        body = {
            "batch": self.batch,
            "state": self.state,
            "sha256": self.sha256,
            "created_at": self.created_at.isoformat(),
            "worker": self.worker,
            "rows": self.rows,
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def loads(cls, data: bytes) -> LedgerEntry:
        body = json.loads(data)
        return cls(
            batch=body["batch"],
            state=body["state"],
            rows={str(k): int(v) for k, v in body["rows"].items()},
            sha256=body.get("sha256", ""),
            created_at=datetime.fromisoformat(body["created_at"]),
            worker=body.get("worker", ""),
        )
