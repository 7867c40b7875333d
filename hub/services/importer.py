"""Import a CRM export file: read, validate, submit through intake in batches.

Idempotent: every imported case's hub id derives from (source system, source id), so a
second run finds every case already there and reports them as duplicates. `dry_run`
reads and checks everything and writes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from hub.imports import ExportFormat, ImportedRow, UnknownFormat, detect_format, read_export
from hub.services.intake import IntakeService
from hub.services.runtime import Hub

# The names `hub import --format` accepts, and the detected formats each one covers.
FORMATS: dict[str, frozenset[ExportFormat]] = {
    "nyc-csv": frozenset({ExportFormat.NYC_CSV}),
    "nyc-socrata-json": frozenset({ExportFormat.NYC_SOCRATA}),
    "boston-csv": frozenset({ExportFormat.BOSTON_CSV}),
    # SF's Open311 requests stored as a Django fixture are Open311 JSON records too.
    "open311-json": frozenset({ExportFormat.OPEN311_JSON, ExportFormat.SF_FIXTURE}),
    "open311-xml": frozenset({ExportFormat.OPEN311_XML}),
}
BATCH = 500
MAX_REJECTED_KEPT = 1000

Progress = Callable[[int], None]


class ImportProblem(ValueError):
    """The file cannot be imported as asked (unknown or mismatched format)."""


@dataclass
class Rejected:
    line: int
    source_id: str | None
    reason: str


@dataclass
class ImportSummary:
    file: str
    format: str
    dry_run: bool
    read: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    rejected_rows: list[Rejected] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "format": self.format,
            "dry_run": self.dry_run,
            "read": self.read,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "reasons": dict(self.reasons.most_common()),
            "rejected_rows": [r.__dict__ for r in self.rejected_rows],
        }


def reason_kind(problem: str) -> str:
    """Group problems by kind: 'unknown service: Noise' and '…: Rodent' count together."""
    return "; ".join(sorted({part.split(":")[0].strip() for part in problem.split(";")}))


def check_format(path: Path, name: str | None) -> ExportFormat:
    try:
        detected = detect_format(path)
    except UnknownFormat as exc:
        raise ImportProblem(str(exc)) from exc
    if name is None:
        return detected
    if name not in FORMATS:
        raise ImportProblem(f"unknown format {name!r}; use one of {', '.join(FORMATS)}")
    if detected not in FORMATS[name]:
        raise ImportProblem(f"{path} looks like {detected.value}, not {name}")
    return detected


class ImportService:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.intake = IntakeService(hub)

    def run(
        self,
        path: Path,
        *,
        format: str | None = None,
        dry_run: bool = False,
        limit: int | None = None,
        progress: Progress | None = None,
        batch_size: int = BATCH,
    ) -> ImportSummary:
        kind = check_format(Path(path), format)
        summary = ImportSummary(str(path), format or kind.value, dry_run)
        rows = read_export(Path(path), catalogue=self.hub.mappings, limit=limit)
        seen: set[str] = set()  # a file may list the same request twice
        for batch in _batches(rows, batch_size):
            good = self._sort(batch, summary)
            fresh = [r for r in good if r.case.hub_id not in seen]  # type: ignore[union-attr]
            summary.duplicates += len(good) - len(fresh)
            seen.update(r.case.hub_id for r in fresh)  # type: ignore[union-attr]
            created = self._dry(fresh) if dry_run else self._submit(fresh)
            summary.imported += created
            summary.duplicates += len(fresh) - created
            summary.read += len(batch)
            if progress:
                progress(len(batch))
        return summary

    @staticmethod
    def _sort(batch: list[ImportedRow], summary: ImportSummary) -> list[ImportedRow]:
        good = []
        for row in batch:
            if row.ok:
                good.append(row)
                continue
            problem = row.problem or "unreadable record"
            summary.rejected += 1
            summary.reasons[reason_kind(problem)] += 1
            if len(summary.rejected_rows) < MAX_REJECTED_KEPT:
                summary.rejected_rows.append(Rejected(row.line, row.source_id, problem))
        return good

    def _submit(self, rows: list[ImportedRow]) -> int:
        if not rows:
            return 0
        results = self.intake.submit_many([r.case for r in rows], actor="import")  # type: ignore[misc]
        return sum(result.created for result in results)

    def _dry(self, rows: list[ImportedRow]) -> int:
        with self.hub.uow() as uow:
            found = uow.cases.get_many([r.case.hub_id for r in rows])  # type: ignore[union-attr]
        return len(rows) - len(found)


def _batches(rows: Iterator[ImportedRow], size: int) -> Iterator[list[ImportedRow]]:
    while batch := list(islice(rows, size)):
        yield batch
