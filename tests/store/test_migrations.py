"""Alembic: upgrade from empty on both stores, the schema matches the table code, and data
migrations mark what they must."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from hub.model import Case
from hub.store.db import make_engine
from hub.store.migrate import alembic_config, current_revision, head_revision, upgrade
from hub.store.tables import metadata
from hub.store.uow import UnitOfWork


def test_upgrade_from_empty_reaches_head_and_matches_models(db_url: str) -> None:
    # db_url is already migrated once; a second upgrade must be a no-op.
    assert upgrade(db_url) == head_revision() == current_revision(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert set(metadata.tables) <= tables
    assert diff == [], f"tables.py and the migrations disagree: {diff}"


def test_fresh_sqlite_file_is_created(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'new.db'}"
    assert current_revision(url) is None
    assert upgrade(url) == head_revision()
    assert (tmp_path / "sub" / "new.db").exists()


def test_0007_marks_rows_attempted_before_it_as_maybe_applied(db_url: str) -> None:
    """Rows in flight at the upgrade keep their lookup-before-create: any row that was
    attempted is marked, a never-attempted one is not."""
    command.downgrade(alembic_config(db_url), "0006")
    engine = make_engine(db_url)
    case = Case(
        source_system="crm", source_id="SR-1", service_code="POTHOLE", description="hole",
        lat=42.35, long=-71.06,
    )  # fmt: skip
    with UnitOfWork(engine) as uow:
        uow.cases.add(case)
        uow.commit()
    insert = text(
        "INSERT INTO outbox (case_id, department, operation, idempotency_key, payload, state,"
        " attempts, next_attempt_at, created_at, updated_at) VALUES (:case, 'publicworks',"
        " :op, :key, '{}', :state, :attempts, :now, :now, :now)"
    )
    now = datetime(2026, 12, 1, tzinfo=UTC)
    rows = [("create", "pending", 0), ("note", "pending", 2), ("cancel", "dead", 8)]
    with engine.begin() as conn:
        for op, state, attempts in rows:
            key = f"{case.hub_id}:{op}"
            params = {"case": case.hub_id, "op": op, "key": key, "now": now}
            conn.execute(insert, {**params, "state": state, "attempts": attempts})
    assert upgrade(db_url) == head_revision()
    with engine.connect() as conn:
        marked = dict(conn.execute(text("SELECT operation, maybe_applied FROM outbox")).all())
    engine.dispose()
    assert {op: bool(flag) for op, flag in marked.items()} == {
        "create": False,
        "note": True,
        "cancel": True,
    }


def test_0008_drops_the_updated_index_and_leaves_room_for_in_place_updates(
    db_url: str,
) -> None:
    def indexes_and_fill_factors() -> tuple[set[str], dict[str, list[str] | None]]:
        engine = make_engine(db_url)
        try:
            with engine.connect() as conn:
                named = {i["name"] for i in inspect(conn).get_indexes("cases")}
                if conn.dialect.name != "postgresql":
                    return named, {}
                rows = conn.execute(
                    text(
                        "SELECT relname, reloptions FROM pg_class"
                        " WHERE relname IN ('cases', 'work_orders', 'outbox')"
                        " AND relnamespace = to_regnamespace(current_schema())"
                    )
                )
                return named, dict(rows.all())
        finally:
            engine.dispose()

    named, options = indexes_and_fill_factors()
    assert "ix_cases_updated" not in named and "ix_cases_service_requested" in named
    if db_url.startswith("postgresql"):
        assert options == {
            "cases": ["fillfactor=70"],
            "work_orders": ["fillfactor=80"],
            "outbox": ["fillfactor=80"],
        }
    command.downgrade(alembic_config(db_url), "0007")
    named, options = indexes_and_fill_factors()
    assert "ix_cases_updated" in named
    assert all(value is None for value in options.values())
    assert upgrade(db_url) == head_revision()
