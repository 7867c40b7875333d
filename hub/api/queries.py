"""Read-side queries of the Open311 API (GET requests with filters).

Kept here rather than in hub/store/repository.py because that file belongs to the store
owner; it is a candidate to move into CaseRepository as `search`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, select

from hub.model import FINISHED, Case, CaseStatus
from hub.store import tables as t

CLOSED = sorted(s.value for s in FINISHED)
OPEN = sorted(s.value for s in CaseStatus if s not in FINISHED)


def search_cases(
    connection: Connection,
    *,
    start: datetime,
    end: datetime,
    service_codes: Sequence[str] = (),
    open311_statuses: Sequence[str] = (),
    limit: int = 1000,
) -> list[Case]:
    """Cases requested in [start, end], newest first; statuses are Open311's open/closed."""
    query = select(t.cases.c.body).where(
        t.cases.c.requested_at >= start, t.cases.c.requested_at <= end
    )
    if service_codes:
        query = query.where(t.cases.c.service_code.in_(list(service_codes)))
    wanted = set(open311_statuses)
    if wanted and wanted != {"open", "closed"}:
        query = query.where(t.cases.c.status.in_(OPEN if "open" in wanted else CLOSED))
    query = query.order_by(t.cases.c.requested_at.desc(), t.cases.c.hub_id).limit(limit)
    return [Case.model_validate(row.body) for row in connection.execute(query)]
