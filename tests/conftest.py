"""Shared fixtures: a migrated database on SQLite and on PostgreSQL.

PostgreSQL tests are marked `postgres`, read HUB_TEST_DATABASE_URL, and each test gets
its own schema. When CI=true and PostgreSQL is unreachable they fail; they never skip
silently in CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from hub.store.migrate import upgrade

PG_ENV = "HUB_TEST_DATABASE_URL"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REPO = Path(__file__).resolve().parents[1]


def postgres_base_url() -> str:
    return os.environ.get(PG_ENV, PG_DEFAULT)


def _postgres_reachable(url: str) -> str | None:
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # reported below: fail in CI, skip with the reason elsewhere
        return str(exc).splitlines()[0]


def _require_postgres(url: str) -> None:
    problem = _postgres_reachable(url)
    if problem is None:
        return
    message = f"PostgreSQL at {make_url(url).render_as_string(hide_password=True)}: {problem}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
    pytest.skip(message + " (set CI=true to make this a failure)")


def with_search_path(url: str, schema: str) -> str:
    return (
        make_url(url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, migrated schema in the test database; dropped afterwards."""
    base = postgres_base_url()
    _require_postgres(base)
    schema = f"hubtest_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = with_search_path(base, schema)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Run the test on both stores."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(db_url: str):
    from hub.store.db import make_engine

    eng = make_engine(db_url)
    yield eng
    eng.dispose()
