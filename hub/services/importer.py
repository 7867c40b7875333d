"""Import a CRM export file: read, validate, submit through intake in batches.

Idempotent: every imported case's hub id derives from (source system, source id), so a
second run finds every case already there and reports them as duplicates. `dry_run`
reads and checks everything and writes nothing.

A record the CRM already finished (status Closed, Resolved, Cancelled…) is history: it is
recorded with its final status and a timeline line saying so, and never dispatched; a
department must not get a work order for a request the city closed years ago. Open
records go through intake like any new request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from hub.imports import ExportFormat, ImportedRow, UnknownFormat, detect_format, read_export
from hub.model import Case, CaseEvent, CaseStatus
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
# Source statuses (case-insensitive) of requests the CRM already finished.
FINISHED_AT_SOURCE = {
    "closed": CaseStatus.CLOSED,
    "resolved": CaseStatus.CLOSED,
    "completed": CaseStatus.CLOSED,
    "complete": CaseStatus.CLOSED,
    "cancelled": CaseStatus.CANCELLED,
    "canceled": CaseStatus.CANCELLED,
}

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
    closed_not_dispatched: int = 0  # of `imported`: finished at the source, recorded only
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
            "closed_not_dispatched": self.closed_not_dispatched,
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
            history, live = _split_finished(fresh)
            if dry_run:
                recorded, created = self._dry(history), self._dry(live)
            else:
                recorded, created = self._record_history(history), self._submit(live)
            summary.imported += recorded + created
            summary.closed_not_dispatched += recorded
            summary.duplicates += len(fresh) - recorded - created
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

    def _record_history(self, rows: list[ImportedRow]) -> int:
        """Write finished records as they are: final status, no route, no outbox row."""
        if not rows:
            return 0
        cases = [_as_history(r.case) for r in rows]  # type: ignore[arg-type]
        with self.hub.uow() as uow:
            inserted = uow.cases.add_many([(case, None) for case in cases])
            uow.timeline.append(*[_history_event(c) for c in cases if c.hub_id in inserted])
            uow.commit()
        return len(inserted)

    def _dry(self, rows: list[ImportedRow]) -> int:
        if not rows:
            return 0
        with self.hub.uow() as uow:
            found = uow.cases.get_many([r.case.hub_id for r in rows])  # type: ignore[union-attr]
        return len(rows) - len(found)


def _split_finished(rows: list[ImportedRow]) -> tuple[list[ImportedRow], list[ImportedRow]]:
    """(finished at the source, still open), in file order."""
    history: list[ImportedRow] = []
    live: list[ImportedRow] = []
    for row in rows:
        (history if finished_at_source(row.case) else live).append(row)  # type: ignore[arg-type]
    return history, live


def finished_at_source(case: Case) -> CaseStatus | None:
    status = str(case.attributes.get("source_status") or "").strip().casefold()
    return FINISHED_AT_SOURCE.get(status)


def _as_history(case: Case) -> Case:
    case.status = finished_at_source(case) or CaseStatus.CLOSED  # hub_id: from the source id
    return case


def _history_event(case: Case) -> CaseEvent:
    source = case.attributes.get("source_status")
    return CaseEvent(
        case_id=case.hub_id,
        kind="imported_finished",
        actor="import",
        message=f"imported as finished at the source ({source}): recorded, not dispatched",
        detail={"source_status": source},
    )


def _batches(rows: Iterator[ImportedRow], size: int) -> Iterator[list[ImportedRow]]:
    while batch := list(islice(rows, size)):
        yield batch
