"""Alembic: upgrade from empty on both stores, and the schema matches the table code."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from hub.store.db import make_engine
from hub.store.migrate import current_revision, head_revision, upgrade
from hub.store.tables import metadata


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
