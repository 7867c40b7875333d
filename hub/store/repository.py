"""Repositories: the only code that writes SQL. Each works inside a UnitOfWork's connection.

Pattern from "Architecture Patterns with Python": services see collections of domain
objects; the unit of work owns the transaction.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    Integer,
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    func,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy import case as sa_case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from hub.model import (
    Case,
    CaseEvent,
    CaseStatus,
    DeliveryState,
    Requester,
    WorkOrder,
    as_utc,
    utcnow,
)
from hub.store import tables as t


def _insert(connection: Connection, table):
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _insert_many(connection: Connection, table, rows: list[dict[str, Any]], key_column=None) -> set:
    """INSERT … ON CONFLICT DO NOTHING for many rows; returns the keys that went in (when
    `key_column` is given). Rows must share their keys."""
    if not rows:
        return set()
    columns = tuple(rows[0])
    values = [tuple(row[name] for name in columns) for row in rows]
    key = key_column.name if key_column is not None else None
    return _insert_rows(connection, table, columns, values, key=key)


def _insert_rows(
    connection: Connection,
    table,
    columns: tuple[str, ...],
    rows: list[tuple],
    *,
    key: str | None = None,
    ignore_conflicts: bool = True,
) -> set:
    """Write `rows` (tuples in `columns` order) with the driver's own statements.

    SQLAlchemy's per-row parameter handling (bind processors, JSON, type coercion) cost
    more CPU than the database's work for intake batches; here each value is converted
    once by a per-column function equal to the column type's bind processing (same stored
    text and timestamps). PostgreSQL gets one INSERT … SELECT FROM unnest(one array per
    column): a constant statement (prepared, parsed once) for any number of rows. SQLite
    gets an executemany of one prepared statement, or, when `key` asks which rows went
    in, a multi-row INSERT … RETURNING."""
    if not rows:
        return set()
    dialect = connection.dialect
    convert = _converters(dialect, table, columns)
    if convert:
        rows = [_converted(row, convert) for row in rows]
    if dialect.name == "postgresql":
        sql = _unnest_sql(dialect, table, columns, key, ignore_conflicts)
        result = connection.exec_driver_sql(sql, tuple(list(c) for c in zip(*rows, strict=True)))
        return set(result.scalars()) if key is not None else set()
    if key is None:
        sql = _insert_sql(dialect, table, columns, 1, key, ignore_conflicts)
        connection.exec_driver_sql(sql, rows)
        return set()
    inserted: set = set()
    per_statement = max(1, _MAX_PARAMS // len(columns))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        sql = _insert_sql(dialect, table, columns, len(chunk), key, ignore_conflicts)
        result = connection.exec_driver_sql(sql, tuple(v for row in chunk for v in row))
        inserted.update(result.scalars())
    return inserted


_MAX_PARAMS = 30000  # below SQLite's 32,766 and PostgreSQL's 65,535 bound parameters
RECORDED_CHUNK = 1000  # ids per IN list of InboundEventRepository.recorded


def _insert_sql(dialect, table, columns, n_rows: int, key, ignore_conflicts: bool) -> str:
    def build() -> str:
        quote = dialect.identifier_preparer.quote
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        row = "(" + ", ".join([mark] * len(columns)) + ")"
        sql = (
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
            f"VALUES {', '.join([row] * n_rows)}"
        )
        return _on_conflict(sql, quote, key, ignore_conflicts)

    return _statement(
        ("insert", dialect.name, table.name, columns, n_rows, key, ignore_conflicts), build
    )


def _unnest_sql(dialect, table, columns, key, ignore_conflicts: bool) -> str:
    """PostgreSQL: INSERT … SELECT FROM unnest(%s::type[], …) in the arrays' order (the
    timeline's ids follow it)."""

    def build() -> str:
        quote = dialect.identifier_preparer.quote
        names = ", ".join(quote(c) for c in columns)
        # %b: binary arrays; psycopg escapes text-format array elements with regexes.
        arrays = ", ".join(f"%b::{table.c[c].type.compile(dialect=dialect)}[]" for c in columns)
        aliases = ", ".join(f"v{i}" for i in range(len(columns)))
        sql = (
            f"INSERT INTO {quote(table.name)} ({names}) SELECT {aliases} "
            f"FROM unnest({arrays}) WITH ORDINALITY AS u({aliases}, n) ORDER BY n"
        )
        return _on_conflict(sql, quote, key, ignore_conflicts)

    return _statement(("unnest", dialect.name, table.name, columns, key, ignore_conflicts), build)


def _on_conflict(sql: str, quote, key: str | None, ignore_conflicts: bool) -> str:
    if ignore_conflicts:
        sql += " ON CONFLICT DO NOTHING"
    return sql if key is None else sql + f" RETURNING {quote(key)}"


def _converters(dialect, table, columns: tuple[str, ...]) -> tuple:
    """(position, function) for each column whose value the driver cannot take as is: the
    function turns it into what the column type's bind processing would send."""

    def build() -> tuple:
        return tuple(
            (i, f)
            for i, name in enumerate(columns)
            if (f := _converter(dialect, table.c[name].type)) is not None
        )

    return _statement(("converters", dialect.name, table.name, columns), build)


def _converted(row: tuple, convert: tuple) -> tuple:
    values = list(row)
    for i, f in convert:
        values[i] = f(values[i])
    return tuple(values)


def _update_rows(
    connection: Connection,
    table,
    rows: list[tuple[dict[str, Any], tuple]],
    *,
    where: tuple[str, ...],
    guard: str = "",
    keep_if_null: tuple[str, ...] = (),
) -> int:
    """UPDATE rows of one shape — (values, then the `where` columns' and the `guard`'s
    values) each — with the driver's own statement, in one executemany, in order;
    returns the rows changed in all. Columns in `keep_if_null` keep their stored value
    where the new one is NULL. Status sync writes a case and a work order per event,
    inside the write transaction: SQLAlchemy's per-statement work (compiled-cache
    lookup, bind processing, result set-up) cost four times SQLite's own."""
    dialect, columns = connection.dialect, tuple(rows[0][0])
    sql = _update_sql(dialect, table, columns, where, guard, keep_if_null)
    convert = _converters(dialect, table, columns)
    params = []
    for values, rest in rows:
        row = tuple(values[name] for name in columns)
        params.append((_converted(row, convert) if convert else row) + rest)
    return connection.exec_driver_sql(sql, params).rowcount


def _update_sql(
    dialect, table, columns: tuple[str, ...], where: tuple[str, ...], guard: str,
    keep_if_null: tuple[str, ...] = (),
) -> str:  # fmt: skip
    def build() -> str:
        quote = dialect.identifier_preparer.quote
        mark = "?" if dialect.paramstyle == "qmark" else "%s"

        def assign(c: str) -> str:
            value = f"COALESCE({mark}, {quote(c)})" if c in keep_if_null else mark
            return f"{quote(c)} = {value}"

        sets = ", ".join(assign(c) for c in columns)
        match = " AND ".join(f"{quote(c)} = {mark}" for c in where)
        sql = f"UPDATE {quote(table.name)} SET {sets} WHERE {match}"
        return sql + (f" AND ({guard.replace('?', mark)})" if guard else "")

    key = ("update", dialect.name, table.name, columns, where, guard, keep_if_null)
    return _statement(key, build)


def _converter(dialect, type_):
    if isinstance(type_, JSON):  # as SQLAlchemy's JSON: None is stored as JSON 'null'
        return getattr(dialect, "_json_serializer", None) or json.dumps
    if isinstance(type_, t.UTCDateTime) and dialect.name == "sqlite":
        return _sqlite_datetime
    return type_.dialect_impl(dialect).bind_processor(dialect)


def _sqlite_datetime(value: datetime | None) -> str | None:
    """UTCDateTime on SQLite: naive UTC in SQLAlchemy's DATETIME text format."""
    if value is None:
        return None
    if value.tzinfo is UTC:  # the usual case: drop the "+00:00" (years are 4 digits)
        return value.isoformat(" ", "microseconds")[:26]
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def _inserted(connection: Connection, stmt, key_column) -> bool:
    """Run an INSERT … ON CONFLICT DO NOTHING; True if a row went in.

    RETURNING, not rowcount: psycopg reports -1 for ON CONFLICT inserts."""
    return connection.execute(stmt.returning(key_column)).first() is not None


class _OneOf(ColumnElement[bool]):
    """`column IN (the list bound as `name`)`. On PostgreSQL `column = ANY(:name)`, the
    list as one array parameter: the statement's text stays the same whatever the list's
    length, so the driver parses it once and the server can prepare it. An expanding IN
    is a new text of hundreds of placeholders per page, which psycopg parses again
    every time (it caches only statements of at most 50 parameters)."""

    inherit_cache = True
    _is_implicitly_boolean = True  # a predicate: SQLite gets no "= 1" after it
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
    ]

    def __init__(self, column, name: str) -> None:
        self.column, self.name = column, name
        self.type = Boolean()


@compiles(_OneOf)
def _one_of_in(element: _OneOf, compiler, **kw) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(_OneOf, "postgresql")
def _one_of_any(element: _OneOf, compiler, **kw) -> str:
    array = bindparam(element.name, type_=postgresql.ARRAY(element.column.type))
    return compiler.process(element.column == any_(array), **kw)


_STATEMENTS: dict[tuple, Any] = {}


def _statement(key: tuple, build):
    """A statement (or driver SQL, or converters) built once per key, with bindparams for
    its values: the dispatcher's per-turn statements spend more in SQLAlchemy's
    construction and cache-key generation than in the database, and a reused statement
    object memoizes its cache key."""
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build()
    return stmt


def _work_order(row) -> WorkOrder | None:
    return WorkOrder.model_validate(dict(row._mapping)) if row else None


# --------------------------------------------------------------------------- cases


class StaleCase(RuntimeError):
    """Someone else saved the case since it was read (optimistic concurrency)."""


class CaseRepository:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._held: dict[str, tuple[Case, int]] | None = None  # hub id -> (case, read at)

    @contextlib.contextmanager
    def saves_held(self) -> Iterator[None]:
        """Saves inside the block are written when it ends: one UPDATE per case (its last
        state, guarded by the version it was first saved from), all in one executemany,
        StaleCase if any moved on. Reads inside the block see the saved copies."""
        self._held = {}
        try:
            yield
            self._write_held()
        finally:
            self._held = None

    def _write_held(self) -> None:
        held = sorted(self._held.items())  # type: ignore[union-attr]  # one lock order
        if held and self._write([saved for _, saved in held]) != len(held):
            raise StaleCase(f"one of {len(held)} cases changed since it was read")

    # What a save writes: never the identity columns fixed at intake (hub id, source,
    # service code, requested time, token), which the indexes hold. With no indexed column
    # in the SET, PostgreSQL can rewrite the row in place (HOT, see tables.CASES_FILLFACTOR).
    _SAVED = ("status", "department", "version", "updated_at", "sla_due", "body", "requester")

    def _write(self, saves: list[tuple[Case, int]]) -> int:
        """UPDATE each case from the version it was read at; the rows changed in all."""
        rows = []
        for case, read_at in saves:
            row = self._row(case)
            rows.append(({name: row[name] for name in self._SAVED}, (case.hub_id, read_at)))
        return _update_rows(self.connection, t.cases, rows, where=("hub_id", "version"))

    def add(self, case: Case, *, token: str | None = None) -> bool:
        """Insert the case; False when it is already there (same hub id or source id)."""
        row = self._row(case) | {"token": token}
        stmt = _insert(self.connection, t.cases).values(**row).on_conflict_do_nothing()
        return _inserted(self.connection, stmt, t.cases.c.hub_id)

    # Status, version and update time live in columns (the truth, changed in bulk by the
    # dispatcher); the JSON body holds the rest of the case. Body and requester are read as
    # their JSON text (see _case).
    _COLUMNS = (
        t.cases.c.hub_id,
        cast(t.cases.c.body, Text).label("body"),
        cast(t.cases.c.requester, Text).label("requester"),
        t.cases.c.status,
        t.cases.c.version,
        t.cases.c.updated_at,
    )
    _FROM_COLUMNS = frozenset({"status", "version", "updated_datetime"})

    def add_many(self, cases: list[tuple[Case, str | None]]) -> set[str]:
        """Insert many cases in one statement; returns the hub ids that were new."""
        rows = [self._row(case) | {"token": token} for case, token in cases]
        return _insert_many(self.connection, t.cases, rows, t.cases.c.hub_id)

    def get(self, hub_id: str) -> Case | None:
        if self._held and hub_id in self._held:
            return self._held[hub_id][0]
        stmt = _statement(
            ("cases.get",),
            lambda: select(*self._COLUMNS).where(t.cases.c.hub_id == bindparam("b_hub_id")),
        )
        row = self.connection.execute(stmt, {"b_hub_id": hub_id}).first()
        return self._case(row) if row else None

    def get_many(self, hub_ids: Sequence[str]) -> dict[str, Case]:
        held = {h: self._held[h][0] for h in hub_ids if h in self._held} if self._held else {}
        wanted = [h for h in hub_ids if h not in held]
        if not wanted:
            return held
        stmt = _statement(
            ("cases.get_many",),
            lambda: select(*self._COLUMNS).where(_OneOf(t.cases.c.hub_id, "b_ids")),
        )
        rows = self.connection.execute(stmt, {"b_ids": wanted})
        return {row.hub_id: self._case(row) for row in rows} | held

    def versions(self, hub_ids: Sequence[str]) -> dict[str, int]:
        """The stored version of each case (absent: no such case): whether a copy read
        earlier is still current, without reading the bodies again. Every write of a
        case moves its version on."""
        if not hub_ids:
            return {}
        c = t.cases.c
        stmt = _statement(
            ("cases.versions",),
            lambda: select(c.hub_id, c.version).where(_OneOf(c.hub_id, "b_ids")),
        )
        rows = self.connection.execute(stmt, {"b_ids": list(hub_ids)})
        return {hub_id: version for hub_id, version in rows}

    def get_by_source(self, source_system: str, source_id: str) -> Case | None:
        row = self.connection.execute(
            select(*self._COLUMNS).where(
                t.cases.c.source_system == source_system, t.cases.c.source_id == source_id
            )
        ).first()
        return self._case(row) if row else None

    def get_by_token(self, token: str) -> Case | None:
        row = self.connection.execute(
            select(*self._COLUMNS).where(t.cases.c.token == token)
        ).first()
        return self._case(row) if row else None

    def save(self, case: Case, *, expected_version: int) -> None:
        """Write a changed case; raise StaleCase if it moved on since `expected_version`."""
        if self._held is not None:
            first = self._held.get(case.hub_id)
            self._held[case.hub_id] = (case, first[1] if first else expected_version)
            return
        if self._write([(case, expected_version)]) != 1:
            raise StaleCase(f"case {case.hub_id} changed since version {expected_version}")

    def advance_status_many(
        self, expected_versions: dict[str, int], *, status: str, at: datetime
    ) -> set[str]:
        """Move many cases to `status` in one statement, each only if still at its expected
        version (optimistic concurrency, row by row); returns the hub ids that moved."""
        if not expected_versions:
            return set()
        c = t.cases.c
        stmt = _statement(
            ("cases.advance_status_many",),
            lambda: (
                update(t.cases)
                # The plain IN on the key is what SQLite can search by: on a row value
                # alone it scanned every case on every turn (PostgreSQL used the key).
                .where(
                    c.hub_id.in_(bindparam("b_ids", expanding=True)),
                    tuple_(c.hub_id, c.version).in_(bindparam("b_pairs", expanding=True)),
                )
                .values(
                    status=bindparam("b_status"),
                    version=c.version + 1,
                    updated_at=bindparam("b_at"),
                )
                .returning(c.hub_id)
            ),
        )
        pairs = list(expected_versions.items())
        values = {
            "b_ids": list(expected_versions),
            "b_pairs": pairs,
            "b_status": status,
            "b_at": at,
        }
        return set(self.connection.execute(stmt, values).scalars())

    def count(self) -> int:
        return self.connection.execute(select(func.count()).select_from(t.cases)).scalar_one()

    @staticmethod
    def _row(case: Case) -> dict[str, Any]:
        return {
            "hub_id": case.hub_id,
            "source_system": case.source_system,
            "source_id": case.source_id,
            "service_code": case.service_code,
            "status": case.status.value,
            "department": case.department,
            "version": case.version,
            "requested_at": case.requested_datetime,
            "updated_at": case.updated_datetime,
            "sla_due": case.sla_due,
            "body": case.redacted(),
            "requester": case.requester.model_dump(mode="json") if case.requester else None,
        }

    @classmethod
    def _case(cls, row) -> Case:
        """The stored case: its body validated by pydantic straight from the JSON text (the
        same model as json.loads + model_validate, in half the time: it is the dispatcher's
        per-turn read), then the column values, already typed, in place of the body's."""
        case = Case.model_validate_json(row.body)
        case.__dict__.update(
            status=CaseStatus(row.status),
            version=row.version,
            updated_datetime=as_utc(row.updated_at),
        )
        case.__pydantic_fields_set__.update(cls._FROM_COLUMNS)
        requester = json.loads(row.requester) if row.requester is not None else None
        if requester:
            case.requester = Requester.model_validate(requester)
        return case


# --------------------------------------------------------------------------- timeline


class _HeldRows:
    """Rows an append-only repository holds inside `held()` and writes in one statement
    per set of columns when the block ends (nothing is written if it raises)."""

    def __init__(self, connection: Connection, table) -> None:
        self.connection = connection
        self.table = table
        self.rows: dict[tuple[str, ...], list[tuple]] | None = None

    def hold(self, columns: tuple[str, ...], rows: list[tuple]) -> bool:
        if self.rows is None:
            return False
        self.rows.setdefault(columns, []).extend(rows)
        return True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.rows = {}
        try:
            yield
            held, self.rows = self.rows, None
            for columns, rows in held.items():
                _insert_rows(self.connection, self.table, columns, rows, ignore_conflicts=False)
        finally:
            self.rows = None


class TimelineRepository:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._held = _HeldRows(connection, t.case_events)

    _APPEND = ("case_id", "kind", "at", "level", "actor", "source", "department", "message")
    _COLUMNS = (*_APPEND, "detail")

    def append(self, *events: CaseEvent) -> None:
        rows = [
            (e.case_id, e.kind, e.at, e.level, e.actor, e.source, e.department, e.message, e.detail)
            for e in events
        ]
        if not self._held.hold(self._COLUMNS, rows):
            columns, table = self._COLUMNS, t.case_events
            _insert_rows(self.connection, table, columns, rows, ignore_conflicts=False)

    def held(self) -> contextlib.AbstractContextManager[None]:
        """Events appended inside the block are written in one statement at its end."""
        return self._held.held()

    def for_case(self, case_id: str) -> list[CaseEvent]:
        rows = self.connection.execute(
            select(t.case_events)
            .where(t.case_events.c.case_id == case_id)
            .order_by(t.case_events.c.id)
        )
        return [CaseEvent.model_validate(dict(row._mapping)) for row in rows]

    def count(self, kind: str | None = None) -> int:
        query = select(func.count()).select_from(t.case_events)
        if kind:
            query = query.where(t.case_events.c.kind == kind)
        return self.connection.execute(query).scalar_one()


# --------------------------------------------------------------------------- work orders


# apply_department_status's guard: a later sequence, or an equal one (a department clock
# in whole seconds) that wins the tie — always (the first flag), or over the same raw
# code, an unmapped record, or a mapped status the event follows in the lifecycle (padded
# with NULLs, which match nothing: one statement shape for every event, so a page's
# updates go out in one executemany).
_FOLLOWS_MAX = len(CaseStatus)
_NEWER_OR_TIE = (
    "last_sequence IS NULL OR last_sequence < ? OR (last_sequence = ? AND (? OR raw_status = ?"
    f" OR mapped_status IS NULL OR mapped_status IN ({', '.join(['?'] * _FOLLOWS_MAX)})))"
)
# Set only when given: nothing unmaps or unlinks a work order.
_KEPT_IF_NONE = ("mapped_status", "external_id", "delivery_state")


class WorkOrderRepository:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._held: list[tuple[dict[str, Any], tuple]] | None = None

    @contextlib.contextmanager
    def status_held(self) -> Iterator[None]:
        """apply_department_status inside the block is written when it ends, every update
        in its order (each with its own guard), in one executemany; it answers True (the
        caller has decided the event wins; the guard still stops a concurrent newer one)."""
        self._held = []
        try:
            yield
            if self._held:
                self._write_statuses(sorted(self._held, key=lambda row: row[1][0]))  # stable
        finally:
            self._held = None

    def _write_statuses(self, rows: list[tuple[dict[str, Any], tuple]]) -> int:
        """UPDATE each (values, (case id, department, *guard)) under the tie guard."""
        return _update_rows(self.connection, t.work_orders, rows,
                            where=("case_id", "department"), guard=_NEWER_OR_TIE,
                            keep_if_null=_KEPT_IF_NONE)  # fmt: skip

    def add(self, order: WorkOrder) -> bool:
        stmt = (
            _insert(self.connection, t.work_orders)
            .values(**order.model_dump(mode="python"))
            .on_conflict_do_nothing()
        )
        return _inserted(self.connection, stmt, t.work_orders.c.id)

    def add_many(self, orders: list[WorkOrder]) -> None:
        rows = [order.model_dump(mode="python") for order in orders]
        _insert_many(self.connection, t.work_orders, rows)

    def get(self, case_id: str, department: str) -> WorkOrder | None:
        wo = t.work_orders.c
        stmt = _statement(
            ("work_orders.get",),
            lambda: select(t.work_orders).where(
                wo.case_id == bindparam("b_case"), wo.department == bindparam("b_department")
            ),
        )
        row = self.connection.execute(stmt, {"b_case": case_id, "b_department": department})
        return _work_order(row.first())

    def by_external_ids(self, department: str, external_ids: Sequence[str]) -> dict[str, WorkOrder]:
        """Work orders by the department's ids (a page of status events), in one query."""
        if not external_ids:
            return {}
        wo = t.work_orders.c
        stmt = _statement(
            ("work_orders.by_external_ids",),
            lambda: select(t.work_orders).where(
                wo.department == bindparam("b_department"),
                _OneOf(wo.external_id, "b_externals"),
            ),
        )
        params = {"b_department": department, "b_externals": list(external_ids)}
        orders = (_work_order(row) for row in self.connection.execute(stmt, params))
        return {order.external_id: order for order in orders if order and order.external_id}

    def for_case(self, case_id: str) -> list[WorkOrder]:
        rows = self.connection.execute(
            select(t.work_orders).where(t.work_orders.c.case_id == case_id)
        )
        return [WorkOrder.model_validate(dict(row._mapping)) for row in rows]

    def for_cases(self, case_ids: Sequence[str]) -> dict[tuple[str, str], WorkOrder]:
        """Work orders of many cases in one query, keyed by (case id, department)."""
        if not case_ids:
            return {}
        stmt = _statement(
            ("work_orders.for_cases",),
            lambda: select(t.work_orders).where(_OneOf(t.work_orders.c.case_id, "b_ids")),
        )
        rows = self.connection.execute(stmt, {"b_ids": list(set(case_ids))})
        orders = (WorkOrder.model_validate(dict(row._mapping)) for row in rows)
        return {(o.case_id, o.department): o for o in orders}

    def mark_delivered_many(self, deliveries: list[dict[str, Any]], *, at: datetime) -> None:
        """Record many deliveries in one round trip; each dict has case_id, department,
        external_id and raw_status."""
        if not deliveries:
            return
        stmt = _statement(("work_orders.mark_delivered_many",), self._mark_delivered)
        self.connection.execute(
            stmt,
            [
                {
                    "b_case": d["case_id"],
                    "b_dept": d["department"],
                    "b_ext": d["external_id"],
                    "b_raw": d["raw_status"],
                    "b_at": at,
                }
                for d in deliveries
            ],
        )

    @staticmethod
    def _mark_delivered():
        wo = t.work_orders.c
        return (
            update(t.work_orders)
            .where(wo.case_id == bindparam("b_case"), wo.department == bindparam("b_dept"))
            .values(
                external_id=bindparam("b_ext"),
                # A status event can arrive (push/poll, linked by hub reference) before the
                # create is settled: the create's initial status must not overwrite it.
                raw_status=sa_case(
                    (wo.last_sequence.is_(None), bindparam("b_raw")), else_=wo.raw_status
                ),
                delivery_state=DeliveryState.DELIVERED.value,
                updated_at=bindparam("b_at", type_=t.work_orders.c.updated_at.type),
            )
        )

    def apply_department_status(
        self,
        case_id: str,
        department: str,
        *,
        sequence: str,
        raw_status: str,
        raw_status_text: str | None = None,
        mapped_status: str | None = None,
        follows: Iterable[str] | None = None,
        external_id: str | None = None,
        delivery_state: str | None = None,
    ) -> bool:
        """Record a department status unless a later one is already recorded. The guard is
        in the UPDATE itself, so two concurrent syncs (a poll and a webhook) cannot let the
        older event overwrite the newer one; False when the event turned out stale.

        At an equal sequence (a department clock in whole seconds) the event wins only over
        the same raw code or a recorded mapped status in `follows` (None: always wins).
        `mapped_status`, `external_id` and `delivery_state` left None keep what is recorded
        (nothing unmaps or unlinks a work order)."""
        row = {
            "last_sequence": sequence,
            "updated_at": utcnow(),
            "raw_status": raw_status,
            "raw_status_text": raw_status_text,
            "mapped_status": mapped_status,
            "external_id": external_id,
            "delivery_state": delivery_state,
        }
        ties = sorted(follows or ())
        if len(ties) > _FOLLOWS_MAX:
            raise ValueError(f"follows names {len(ties)} statuses; there are {_FOLLOWS_MAX}")
        guard = (sequence, sequence, follows is None, raw_status,
                 *ties, *[None] * (_FOLLOWS_MAX - len(ties)))  # fmt: skip
        rest = (case_id, department, *guard)
        if self._held is not None:
            self._held.append((row, rest))
            return True
        changed = self._write_statuses([(row, rest)])
        return changed == 1

    def update(self, case_id: str, department: str, **values: Any) -> None:
        values["updated_at"] = values.get("updated_at") or utcnow()
        self.connection.execute(
            update(t.work_orders)
            .where(t.work_orders.c.case_id == case_id, t.work_orders.c.department == department)
            .values(**values)
        )

    def oldest_created_at(self, department: str) -> datetime | None:
        """The earliest creation time of the department's work orders (None: it has
        none): where status sync's first poll of a department starts."""
        wo = t.work_orders.c
        return self.connection.execute(
            select(func.min(wo.created_at)).where(wo.department == department)
        ).scalar_one_or_none()

    def first_created_at(self, department: str) -> datetime | None:
        """The creation time of the department's first work order by id (None: it has
        none): where reconciliation starts reading a department's changes."""
        wo = t.work_orders.c
        return self.connection.execute(
            select(wo.created_at).where(wo.department == department).order_by(wo.id).limit(1)
        ).scalar_one_or_none()

    def count_by_state(self, department: str | None = None) -> dict[str, int]:
        query = select(t.work_orders.c.delivery_state, func.count()).group_by(
            t.work_orders.c.delivery_state
        )
        if department:
            query = query.where(t.work_orders.c.department == department)
        return {state: n for state, n in self.connection.execute(query)}


# --------------------------------------------------------------------------- outbox


class OutboxState:
    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"
    HELD = "held"
    SKIPPED = "skipped"  # no longer needed (e.g. a note for a case cancelled before create)


@dataclass(frozen=True)
class OutboxItem:
    id: int
    case_id: str
    department: str
    operation: str
    idempotency_key: str
    payload: dict[str, Any]
    state: str
    attempts: int
    next_attempt_at: datetime
    locked_until: datetime | None
    locked_by: str | None
    last_error_class: str | None
    last_error_message: str | None
    created_at: datetime
    maybe_applied: bool = False  # a create looks its work order up first (see the table)

    @classmethod
    def from_row(cls, row) -> OutboxItem:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class QueueStats:
    department: str
    pending: int
    due: int
    dead: int
    held: int
    oldest_due: datetime | None


OPEN_STATES = (OutboxState.PENDING, OutboxState.DEAD, OutboxState.HELD)

# The distinct departments of the outbox by hopping along the department index, one
# probe per department (neither store skip-scans on its own here): DISTINCT would read
# every entry, a million rows after a year.
_DEPARTMENTS_SKIP_SCAN = text(
    """
    WITH RECURSIVE d(department) AS (
        SELECT min(department) FROM outbox
        UNION ALL
        SELECT (SELECT min(o.department) FROM outbox o WHERE o.department > d.department)
        FROM d WHERE d.department IS NOT NULL
    )
    SELECT department FROM d WHERE department IS NOT NULL
    """
)


def outbox_departments(connection: Connection) -> list[str]:
    """Every department with a row in the outbox, in name order, by index seeks."""
    return list(connection.execute(_DEPARTMENTS_SKIP_SCAN).scalars())


class OutboxRepository:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def enqueue(
        self,
        *,
        case_id: str,
        department: str,
        operation: str,
        idempotency_key: str,
        payload: dict[str, Any] | None = None,
        due: datetime | None = None,
        state: str = OutboxState.PENDING,
    ) -> bool:
        """Add a delivery; False if one with the same idempotency key already exists."""
        now = utcnow()
        stmt = (
            _insert(self.connection, t.outbox)
            .values(
                case_id=case_id,
                department=department,
                operation=operation,
                idempotency_key=idempotency_key,
                payload=payload or {},
                state=state,
                attempts=0,
                next_attempt_at=due or now,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )
        return _inserted(self.connection, stmt, t.outbox.c.id)

    def enqueue_many(self, deliveries: list[dict[str, Any]]) -> None:
        """Many deliveries in one statement (keys as in enqueue); existing keys are kept."""
        now = utcnow()
        rows = [
            {
                "payload": {},
                "state": OutboxState.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
                **delivery,
            }
            for delivery in deliveries
        ]
        _insert_many(self.connection, t.outbox, rows)

    def claim(
        self,
        *,
        worker: str,
        limit: int,
        lease: timedelta,
        now: datetime | None = None,
        only: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
    ) -> list[OutboxItem]:
        """Lease up to `limit` due deliveries whose predecessors for the same (case,
        department) are all done. SKIP LOCKED on PostgreSQL lets any number of workers
        share the queue; SQLite serialises writers with BEGIN IMMEDIATE instead."""
        now = now or utcnow()
        only = None if only is None else list(only)
        excluded = list(exclude)
        pg = self.connection.dialect.name == "postgresql"
        key = ("outbox.claim", pg, only is not None, bool(excluded))
        stmt = _statement(key, lambda: self._claim_statement(*key[1:]))
        params = {"b_now": now, "b_until": now + lease, "b_worker": worker, "b_limit": limit}
        params.update(b_only=only or [], b_excluded=excluded)
        return [OutboxItem.from_row(row) for row in self.connection.execute(stmt, params)]

    def claim_each(
        self,
        *,
        worker: str,
        departments: Sequence[str],
        limit: int,
        lease: timedelta,
        now: datetime,
    ) -> list[OutboxItem]:
        """Lease up to `limit` due deliveries of each department, each department's in
        its own order. PostgreSQL does it in one statement (a LATERAL claim per
        department); SQLite, in-process, one claim per department."""
        if self.connection.dialect.name != "postgresql":
            items: list[OutboxItem] = []
            for department in departments:
                items += self.claim(
                    worker=worker, limit=limit, lease=lease, now=now, only=[department]
                )
            return items
        stmt = _statement(("outbox.claim_each",), self._claim_each_statement)
        params = {"b_now": now, "b_until": now + lease, "b_worker": worker, "b_limit": limit}
        params["b_departments"] = list(departments)
        return [OutboxItem.from_row(row) for row in self.connection.execute(stmt, params)]

    @classmethod
    def _claim_each_statement(cls):
        o = t.outbox
        # AS wanted(name), a column list: without it PostgreSQL read wanted.name as the
        # function call name(wanted), compared department as type `name` and could not
        # use the index's order: it read, probed and sorted every pending row of the
        # department per claim (15 ms at 4,000 rows, 70% of the backend's CPU).
        names = (
            func.unnest(bindparam("b_departments", type_=postgresql.ARRAY(String)))
            .table_valued("name")
            .render_derived(name="wanted")
        )
        picked = (
            select(o.c.id)
            .where(cls._due(o), o.c.department == names.c.name)
            .order_by(o.c.next_attempt_at, o.c.id)
            .limit(bindparam("b_limit", type_=Integer))
            .with_for_update(skip_locked=True, of=o)
            .lateral("picked_one")
        )
        picked_cte = select(picked.c.id).select_from(names).join(picked, true()).cte("picked")
        return cls._lease(picked_cte)

    @staticmethod
    def _due(o):
        """Due, not leased, and no earlier open operation for the same (case, department)."""
        now = bindparam("b_now", type_=o.c.updated_at.type)
        prior = o.alias("prior")
        # OFFSET 0 keeps PostgreSQL from turning this into an anti-join whose plan hangs on
        # table statistics: right after a bulk intake (stats say "1 row") it nested-looped
        # the whole queue per claim (94 ms at 600 rows, quadratic). As a correlated subplan
        # it is one probe of ix_outbox_case_dept per row the ordered scan reaches, and the
        # scan stops at LIMIT.
        earlier_open = (
            select(prior.c.id)
            .where(
                prior.c.case_id == o.c.case_id,
                prior.c.department == o.c.department,
                prior.c.id < o.c.id,
                prior.c.state.not_in([OutboxState.DONE, OutboxState.SKIPPED]),
            )
            .offset(0)
            .exists()
        )
        return and_(
            o.c.state == OutboxState.PENDING,
            o.c.next_attempt_at <= now,
            or_(o.c.locked_until.is_(None), o.c.locked_until < now),
            ~earlier_open,
        )

    @staticmethod
    def _lease(picked_cte):
        o = t.outbox
        return (
            update(o)
            .where(o.c.id == picked_cte.c.id)
            .values(
                locked_until=bindparam("b_until", type_=o.c.locked_until.type),
                locked_by=bindparam("b_worker"),
                attempts=o.c.attempts + 1,
                # A lease still set is one that expired: its worker may have sent the call.
                maybe_applied=or_(o.c.maybe_applied, o.c.locked_until.is_not(None)),
                updated_at=bindparam("b_now", type_=o.c.updated_at.type),
            )
            .returning(*o.c)
        )

    @classmethod
    def _claim_statement(cls, pg: bool, only: bool, excluded: bool):
        o = t.outbox
        due = cls._due(o)
        if only:
            due = and_(due, o.c.department.in_(bindparam("b_only", expanding=True)))
        if excluded:
            due = and_(due, o.c.department.not_in(bindparam("b_excluded", expanding=True)))
        picked = (
            select(o.c.id)
            .where(due)
            .order_by(o.c.next_attempt_at, o.c.id)
            .limit(bindparam("b_limit", type_=Integer))
        )
        if pg:
            picked = picked.with_for_update(skip_locked=True, of=o)
        return cls._lease(picked.cte("picked"))

    def _settle(self, item_id: int, worker: str | None, **values: Any) -> bool:
        """Update a leased row; False if the lease was lost to another worker (fencing)."""
        values.setdefault("updated_at", utcnow())
        query = update(t.outbox).where(t.outbox.c.id == item_id)
        if worker is not None:
            query = query.where(t.outbox.c.locked_by == worker)
        return self.connection.execute(query.values(**values)).rowcount == 1

    def mark_done(self, item_id: int, *, worker: str | None = None) -> bool:
        now = utcnow()
        return self._settle(
            item_id,
            worker,
            state=OutboxState.DONE,
            locked_until=None,
            completed_at=now,
            last_error_class=None,
            last_error_message=None,
        )

    def mark_done_many(self, item_ids: Sequence[int], *, worker: str) -> set[int]:
        """Settle many successes in one statement; returns the ids this worker still held
        (the fence: a row whose lease moved to another worker is not touched)."""
        if not item_ids:
            return set()
        stmt = _statement(("outbox.mark_done_many",), self._mark_done_many_statement)
        params = {"b_ids": list(item_ids), "b_worker": worker, "b_now": utcnow()}
        return set(self.connection.execute(stmt, params).scalars())

    @staticmethod
    def _mark_done_many_statement():
        o = t.outbox.c
        now = bindparam("b_now", type_=o.updated_at.type)
        return (
            update(t.outbox)
            .where(_OneOf(o.id, "b_ids"), o.locked_by == bindparam("b_worker"))
            .values(
                state=OutboxState.DONE,
                locked_until=None,
                completed_at=now,
                updated_at=now,
                last_error_class=None,
                last_error_message=None,
            )
            .returning(o.id)
        )

    def schedule_retry(
        self,
        item_id: int,
        *,
        at: datetime,
        error_class: str,
        message: str,
        worker: str | None = None,
        refund_attempt: bool = False,
        refused: bool = False,
    ) -> bool:
        """Back to pending at `at`. `refused`: the department provably did nothing with
        the attempt; otherwise the row is marked `maybe_applied` for good."""
        values: dict[str, Any] = {
            "next_attempt_at": at,
            "locked_until": None,
            "locked_by": None,
            "last_error_class": error_class,
            "last_error_message": message[:2000],
        }
        if refund_attempt:  # a paused department's turn does not count as an attempt
            values["attempts"] = t.outbox.c.attempts - 1
        if not refused:
            values["maybe_applied"] = True
        return self._settle(item_id, worker, **values)

    def mark_dead(
        self,
        item_id: int,
        *,
        error_class: str,
        message: str,
        worker: str | None = None,
        refused: bool = False,
    ) -> bool:
        """Dead letter; `refused` as for `schedule_retry` (a replay keeps the flag)."""
        values: dict[str, Any] = {} if refused else {"maybe_applied": True}
        return self._settle(
            item_id,
            worker,
            state=OutboxState.DEAD,
            locked_until=None,
            last_error_class=error_class,
            last_error_message=message[:2000],
            **values,
        )

    def mark_skipped(self, item_id: int, *, reason: str, worker: str | None = None) -> bool:
        return self._settle(
            item_id,
            worker,
            state=OutboxState.SKIPPED,
            locked_until=None,
            last_error_class="skipped",
            last_error_message=reason[:2000],
        )

    def get(self, item_id: int) -> OutboxItem | None:
        row = self.connection.execute(select(t.outbox).where(t.outbox.c.id == item_id)).first()
        return OutboxItem.from_row(row) if row else None

    def for_case(self, case_id: str) -> list[OutboxItem]:
        rows = self.connection.execute(
            select(t.outbox).where(t.outbox.c.case_id == case_id).order_by(t.outbox.c.id)
        )
        return [OutboxItem.from_row(row) for row in rows]

    def for_cases(self, case_ids: Sequence[str]) -> dict[str, list[OutboxItem]]:
        """The outbox rows of many cases in one query, each case's in id order."""
        found: dict[str, list[OutboxItem]] = {case_id: [] for case_id in case_ids}
        if not found:
            return found
        rows = self.connection.execute(
            select(t.outbox).where(t.outbox.c.case_id.in_(list(found))).order_by(t.outbox.c.id)
        )
        for row in rows:
            found[row.case_id].append(OutboxItem.from_row(row))
        return found

    def list(self, *, state: str, department: str | None = None, limit: int = 1000):
        query = select(t.outbox).where(t.outbox.c.state == state)
        if department:
            query = query.where(t.outbox.c.department == department)
        rows = self.connection.execute(query.order_by(t.outbox.c.id).limit(limit))
        return [OutboxItem.from_row(row) for row in rows]

    def replay(self, item_ids: Sequence[int] | None, *, now: datetime | None = None) -> int:
        """Dead letters back to pending with a fresh attempt budget. None = all."""
        now = now or utcnow()
        query = update(t.outbox).where(t.outbox.c.state == OutboxState.DEAD)
        if item_ids is not None:
            query = query.where(t.outbox.c.id.in_(list(item_ids)))
        values = {
            "state": OutboxState.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "locked_until": None,
            "locked_by": None,
            "updated_at": now,
        }
        return self.connection.execute(query.values(**values)).rowcount

    def release_held(self, case_id: str, *, now: datetime | None = None) -> int:
        now = now or utcnow()
        return self.connection.execute(
            update(t.outbox)
            .where(t.outbox.c.case_id == case_id, t.outbox.c.state == OutboxState.HELD)
            .values(state=OutboxState.PENDING, next_attempt_at=now, updated_at=now)
        ).rowcount

    def stats(self, now: datetime | None = None) -> dict[str, QueueStats]:
        """Per department that has any delivery: pending (due or scheduled), dead, held.
        Index seeks only, on both stores: the departments by a skip scan, then their open
        rows by (department, state), never the done history (millions of rows a year)."""
        now = now or utcnow()
        departments = outbox_departments(self.connection)
        if not departments:
            return {}
        o = t.outbox
        rows = self.connection.execute(
            select(
                o.c.department,
                func.sum(_case(o.c.state == OutboxState.PENDING)),
                func.sum(_case(and_(o.c.state == OutboxState.PENDING, o.c.next_attempt_at <= now))),
                func.sum(_case(o.c.state == OutboxState.DEAD)),
                func.sum(_case(o.c.state == OutboxState.HELD)),
                func.min(_case_value(o.c.state == OutboxState.PENDING, o.c.next_attempt_at)),
            )
            .where(o.c.department.in_(departments), o.c.state.in_(OPEN_STATES))
            .group_by(o.c.department)
        )
        stats = {dept: QueueStats(dept, 0, 0, 0, 0, None) for dept in departments}
        for dept, p, d, x, h, oldest in rows:
            stats[dept] = QueueStats(
                dept, int(p or 0), int(d or 0), int(x or 0), int(h or 0), oldest
            )
        return stats

    def count(self, state: str | None = None) -> int:
        query = select(func.count()).select_from(t.outbox)
        if state:
            query = query.where(t.outbox.c.state == state)
        return self.connection.execute(query).scalar_one()

    def leased(self, department: str, now: datetime) -> int:
        """Deliveries of `department` leased by any worker now: the cluster's in-flight."""
        o = t.outbox
        return self.connection.execute(
            select(func.count()).where(
                o.c.department == department,
                o.c.state == OutboxState.PENDING,
                o.c.locked_until > now,
            )
        ).scalar_one()

    def next_due(self) -> datetime | None:
        return self.connection.execute(
            select(func.min(t.outbox.c.next_attempt_at)).where(
                t.outbox.c.state == OutboxState.PENDING
            )
        ).scalar_one()


def _case(condition):
    return sa_case((condition, 1), else_=0)


def _case_value(condition, value):
    return sa_case((condition, value), else_=None)


# --------------------------------------------------------------------------- departments


@dataclass
class DepartmentHealth:
    department: str
    paused: bool = False
    pause_reason: str | None = None
    circuit: str = "closed"
    consecutive_failures: int = 0
    opened_at: datetime | None = None
    retry_at: datetime | None = None


class DepartmentStateRepository:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def all(self) -> dict[str, DepartmentHealth]:
        """Every department's row: read by each dispatcher turn."""
        stmt = _statement(("department_state.all",), lambda: select(t.department_state))
        rows = self.connection.execute(stmt)
        return {
            row.department: DepartmentHealth(
                department=row.department,
                paused=row.paused,
                pause_reason=row.pause_reason,
                circuit=row.circuit,
                consecutive_failures=row.consecutive_failures,
                opened_at=row.opened_at,
                retry_at=row.retry_at,
            )
            for row in rows
        }

    def get(self, department: str) -> DepartmentHealth:
        return self.all().get(department) or DepartmentHealth(department)

    def try_begin_canary(self, department: str, *, now: datetime, until: datetime) -> bool:
        """Atomically turn an open circuit half-open; only one worker wins the canary."""
        result = self.connection.execute(
            update(t.department_state)
            .where(
                t.department_state.c.department == department,
                t.department_state.c.circuit != "closed",
                t.department_state.c.paused.is_(False),
                t.department_state.c.retry_at <= now,
            )
            .values(circuit="half_open", retry_at=until, updated_at=now)
        )
        return result.rowcount == 1

    def put(self, health: DepartmentHealth) -> None:
        values = {
            "paused": health.paused,
            "pause_reason": health.pause_reason,
            "circuit": health.circuit,
            "consecutive_failures": health.consecutive_failures,
            "opened_at": health.opened_at,
            "retry_at": health.retry_at,
            "updated_at": utcnow(),
        }
        stmt = _insert(self.connection, t.department_state).values(
            department=health.department, **values
        )
        stmt = stmt.on_conflict_do_update(index_elements=["department"], set_=values)
        self.connection.execute(stmt)

    def refill_tokens(
        self, department: str, *, rate: float | None, capacity: float, now: float
    ) -> float:
        """Refill the department's token bucket up to `now` (epoch seconds) and return its
        tokens. The upsert locks the row until commit (SQLite: the writer lock is held
        already), so the claims of all workers for this department are serialised: the
        database is the coordinator. With no rate the row is only locked."""
        ds = t.department_state
        pg = self.connection.dialect.name == "postgresql"
        least, greatest = (func.least, func.greatest) if pg else (func.min, func.max)
        tokens = func.coalesce(ds.c.tokens, capacity)
        if rate is not None:
            elapsed = greatest(0.0, now - func.coalesce(ds.c.tokens_at, now))
            tokens = least(capacity, tokens + rate * elapsed)
        stmt = _insert(self.connection, ds).values(
            department=department,
            paused=False,
            circuit="closed",
            consecutive_failures=0,
            updated_at=utcnow(),
            tokens=capacity,
            tokens_at=now,
        )
        set_ = {"tokens": tokens, "tokens_at": greatest(func.coalesce(ds.c.tokens_at, now), now)}
        stmt = stmt.on_conflict_do_update(index_elements=["department"], set_=set_)
        return float(self.connection.execute(stmt.returning(ds.c.tokens)).scalar_one())

    def spend_tokens(self, department: str, count: int) -> None:
        ds = t.department_state
        self.connection.execute(
            update(ds).where(ds.c.department == department).values(tokens=ds.c.tokens - count)
        )


# --------------------------------------------------------------------------- status updates


@dataclass(frozen=True)
class StatusUpdate:
    """One canonical status change (an Open311 servicerequestupdates entry)."""

    id: int
    case_id: str
    at: datetime
    old_status: str | None
    status: str
    department: str | None
    raw_code: str | None
    description: str | None
    media_url: str | None
    closure_code: str | None
    source: str

    @classmethod
    def from_row(cls, row) -> StatusUpdate:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})


class InboundEventRepository:
    """Status events as departments reported them (poll, webhook, file), one row each:
    the insert-ignore on (department, external_event_id) is what makes a replayed event
    a no-op. Status sync writes a page of them in two statements."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    _RECORD = (
        "department", "external_event_id", "external_id", "raw_code", "raw_text",
        "occurred_at", "sequence", "received_at", "payload", "outcome", "case_id",
    )  # fmt: skip

    def record_many(self, rows: list[dict[str, Any]]) -> set[str]:
        """Insert-ignore a page of one department's events (distinct external event ids,
        keys as `_RECORD`, the outcome included); returns the external event ids that were
        new. Inserted in id order, so two syncs of overlapping pages take the unique
        index's locks alike."""
        rows = sorted(rows, key=lambda row: row["external_event_id"])
        values = [tuple(row[name] for name in self._RECORD) for row in rows]
        return _insert_rows(
            self.connection, t.inbound_events, self._RECORD, values, key="external_event_id"
        )

    def recorded(self, department: str, external_event_ids: Iterable[str]) -> set[str]:
        """Those of the ids already recorded for the department: a read, so status sync
        can drop an overlapping poll's repeats before it takes the write lock."""
        ie = t.inbound_events.c
        stmt = _statement(
            ("inbound_events.recorded",),
            lambda: select(ie.external_event_id).where(
                ie.department == bindparam("b_department"),
                _OneOf(ie.external_event_id, "b_ids"),
            ),
        )
        wanted = sorted(set(external_event_ids))
        found: set[str] = set()
        for start in range(0, len(wanted), RECORDED_CHUNK):
            chunk = wanted[start : start + RECORDED_CHUNK]
            rows = self.connection.execute(stmt, {"b_department": department, "b_ids": chunk})
            found.update(rows.scalars())
        return found

    def counts(self, department: str | None = None) -> dict[str, int]:
        """Recorded events per outcome (the unmapped and orphan counters of the alerts)."""
        ie = t.inbound_events.c
        query = select(ie.outcome, func.count()).group_by(ie.outcome)
        if department:
            query = query.where(ie.department == department)
        return {str(outcome): n for outcome, n in self.connection.execute(query)}


class StatusUpdateRepository:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._held = _HeldRows(connection, t.status_updates)

    def held(self) -> contextlib.AbstractContextManager[None]:
        """Updates added inside the block are written in one statement at its end."""
        return self._held.held()

    def add(self, **values: Any) -> int | None:
        """The new row's id; None inside `held()`, where it is written later."""
        values.setdefault("at", utcnow())
        if self._held.hold(tuple(values), [tuple(values.values())]):
            return None
        stmt = _statement(  # built once per set of columns: status sync adds one per event
            ("status_updates.add", tuple(sorted(values))),
            lambda: (
                t.status_updates.insert()
                .values({name: bindparam(f"v_{name}") for name in values})
                .returning(t.status_updates.c.id)
            ),
        )
        params = {f"v_{name}": value for name, value in values.items()}
        return self.connection.execute(stmt, params).scalar_one()

    def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Rows must share their keys."""
        if rows:
            columns = tuple(rows[0])
            values = [tuple(row[name] for name in columns) for row in rows]
            _insert_rows(self.connection, t.status_updates, columns, values, ignore_conflicts=False)

    def between(
        self, start: datetime, end: datetime, *, limit: int = 1000, after_id: int = 0
    ) -> list[StatusUpdate]:
        rows = self.connection.execute(
            select(t.status_updates)
            .where(
                t.status_updates.c.at >= start,
                t.status_updates.c.at <= end,
                t.status_updates.c.id > after_id,
            )
            .order_by(t.status_updates.c.id)
            .limit(limit)
        )
        return [StatusUpdate.from_row(row) for row in rows]

    def for_case(self, case_id: str) -> list[StatusUpdate]:
        rows = self.connection.execute(
            select(t.status_updates)
            .where(t.status_updates.c.case_id == case_id)
            .order_by(t.status_updates.c.id)
        )
        return [StatusUpdate.from_row(row) for row in rows]


# --------------------------------------------------------------------------- rejected inputs


class RejectedLike(Protocol):
    """What the store keeps of a department input an adapter refused: the shape of
    hub.adapters.RejectedInput (the store does not import the ports)."""

    kind: str
    source: str
    reason: str
    digest: str | None


@dataclass(frozen=True)
class RejectedEntry:
    """One stored rejected input."""

    id: int
    department: str
    kind: str
    source: str
    reason: str
    digest: str | None  # None: the adapter refused the input unread
    received_at: datetime


@dataclass(frozen=True)
class RejectedSummary:
    """A department's rejected inputs: how many lately, in all, and the latest one."""

    department: str
    last_24h: int
    total: int
    last_received_at: datetime | None
    last_kind: str | None
    last_reason: str | None


class RejectedInputRepository:
    """Department inputs an adapter refused (hub.services.sync records them). One row per
    (department, kind, source, digest): the insert-ignore makes a re-polled input (an
    overlapping poll, a quarantined file listed again) a no-op."""

    WINDOW = timedelta(hours=24)
    _COLUMNS = ("department", "kind", "source", "digest", "reason", "received_at")
    # The columns' sizes: an adapter's over-long name or digest must not fail the poll.
    _SOURCE, _REASON, _KIND, _DIGEST = 255, 2000, 32, 64

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def record(self, department: str, inputs: Iterable[RejectedLike], now: datetime) -> int:
        """Store each input once, received at `now`; returns how many were new."""
        rows = list(dict.fromkeys(self._row(department, item, now) for item in inputs))
        columns = self._COLUMNS
        table = t.rejected_inputs
        return len(_insert_rows(self.connection, table, columns, rows, key="id"))

    def _row(self, department: str, item: RejectedLike, now: datetime) -> tuple:
        return (
            department,
            item.kind[: self._KIND],
            item.source[: self._SOURCE],
            (item.digest or "")[: self._DIGEST],
            item.reason[: self._REASON],
            now,
        )

    def summary(self, now: datetime, department: str | None = None) -> dict[str, RejectedSummary]:
        """Per department: rejected in the 24 hours up to `now`, in all, and the latest."""
        r = t.rejected_inputs.c
        recent = func.sum(_case(r.received_at > now - self.WINDOW))
        totals = select(r.department, recent, func.count(), func.max(r.received_at))
        totals = totals.group_by(r.department)
        if department is not None:
            totals = totals.where(r.department == department)
        latest = self._latest(department)
        return {
            dept: RejectedSummary(
                dept, int(n_24h or 0), int(n), at, *latest.get(dept, (None, None))
            )
            for dept, n_24h, n, at in self.connection.execute(totals)
        }

    def _latest(self, department: str | None) -> dict[str, tuple[str, str]]:
        """Each department's latest input: (kind, reason)."""
        r = t.rejected_inputs.c
        order = (r.received_at.desc(), r.id.desc())
        rank = func.row_number().over(partition_by=r.department, order_by=order).label("n")
        ranked = select(r.department, r.kind, r.reason, rank)
        if department is not None:
            ranked = ranked.where(r.department == department)
        sub = ranked.subquery()
        rows = self.connection.execute(
            select(sub.c.department, sub.c.kind, sub.c.reason).where(sub.c.n == 1)
        )
        return {dept: (kind, reason) for dept, kind, reason in rows}

    def recent(self, department: str, limit: int = 20) -> list[RejectedEntry]:
        """The department's latest rejected inputs, newest first."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        r = t.rejected_inputs.c
        rows = self.connection.execute(
            select(t.rejected_inputs)
            .where(r.department == department)
            .order_by(r.received_at.desc(), r.id.desc())
            .limit(limit)
        )
        return [self._entry(row) for row in rows]

    @staticmethod
    def _entry(row) -> RejectedEntry:
        m = row._mapping
        values = {name: m[name] for name in RejectedEntry.__dataclass_fields__}
        return RejectedEntry(**(values | {"digest": m["digest"] or None}))


# --------------------------------------------------------------------------- scheduling


class JobRunRepository:
    """Scheduled runs claimed in the database: a unique (job, slot) means one run."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def claim(self, job: str, slot: str, *, worker: str) -> bool:
        stmt = (
            _insert(self.connection, t.job_runs)
            .values(job=job, slot=slot, claimed_by=worker, started_at=utcnow(), detail={})
            .on_conflict_do_nothing()
        )
        return _inserted(self.connection, stmt, t.job_runs.c.id)

    def finish(self, job: str, slot: str, *, outcome: str, detail: dict[str, Any]) -> None:
        self.connection.execute(
            update(t.job_runs)
            .where(t.job_runs.c.job == job, t.job_runs.c.slot == slot)
            .values(finished_at=utcnow(), outcome=outcome, detail=detail)
        )


class SyncCursorRepository:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def get(self, department: str, stream: str = "status") -> datetime | None:
        return self.connection.execute(
            select(t.sync_cursors.c.watermark).where(
                t.sync_cursors.c.department == department, t.sync_cursors.c.stream == stream
            )
        ).scalar_one_or_none()

    def set(self, department: str, watermark: datetime, stream: str = "status") -> None:
        values = {"watermark": watermark, "updated_at": utcnow()}
        stmt = _insert(self.connection, t.sync_cursors).values(
            department=department, stream=stream, **values
        )
        self.connection.execute(
            stmt.on_conflict_do_update(index_elements=["department", "stream"], set_=values)
        )


# --------------------------------------------------------------------------- holds


class HoldRepository:
    """Queries of the hold service (hub.services.holds) that no other repository needs."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def touch_if_idle(self, item_id: int, *, now: datetime | None = None) -> bool:
        """Guarded touch of one outbox row: true if no worker holds its lease. The UPDATE's
        row lock (PostgreSQL) / write lock (SQLite) keeps workers from claiming it until
        the transaction commits."""
        now = now or utcnow()
        o = t.outbox.c
        result = self.connection.execute(
            update(t.outbox)
            .where(o.id == item_id, or_(o.locked_until.is_(None), o.locked_until < now))
            .values(updated_at=now)
        )
        return result.rowcount == 1

    def held_case_ids(self) -> list[str]:
        """Cases with at least one outbox row in state ``held``."""
        query = select(t.outbox.c.case_id).where(t.outbox.c.state == OutboxState.HELD)
        return list(self.connection.execute(query.distinct()).scalars())

    def case_ids_for_services(self, service_codes: Sequence[str]) -> list[str]:
        if not service_codes:
            return []
        query = select(t.cases.c.hub_id).where(t.cases.c.service_code.in_(service_codes))
        return list(self.connection.execute(query).scalars())


__all__ = [
    "CaseRepository",
    "DeliveryState",
    "DepartmentHealth",
    "DepartmentStateRepository",
    "HoldRepository",
    "JobRunRepository",
    "OutboxItem",
    "OutboxRepository",
    "OutboxState",
    "QueueStats",
    "RejectedEntry",
    "RejectedInputRepository",
    "RejectedLike",
    "RejectedSummary",
    "StaleCase",
    "StatusUpdate",
    "StatusUpdateRepository",
    "SyncCursorRepository",
    "TimelineRepository",
    "WorkOrderRepository",
]
