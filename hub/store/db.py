"""Database URLs and engines. SQLite is the embedded default; PostgreSQL the scale-out store."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

DATABASE_URL_ENV = "HUB_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///hub.db"
# FULL: a committed case survives power loss, not only a process crash (kill -9).
SQLITE_SYNCHRONOUS_ENV = "HUB_SQLITE_SYNCHRONOUS"


def database_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def redact_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # isolation_level=None hands transaction control to us, so BEGIN IMMEDIATE works.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={os.environ.get(SQLITE_SYNCHRONOUS_ENV, 'FULL')}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn) -> None:
    # Take the write lock at BEGIN: claims read-then-write and must not interleave.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_read(conn) -> None:
    # Readers only need a snapshot; WAL lets them run beside the one writer.
    conn.exec_driver_sql("BEGIN")


def make_engine(
    url: str | None = None, *, pool_size: int = 10, read_only: bool = False
) -> Engine:
    """An engine for `url`. `read_only` engines (SQLite) take no write lock at BEGIN, so
    API reads do not queue behind intake and delivery writes."""
    url = database_url(url)
    if is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_read if read_only else _sqlite_begin)
        return engine
    # hide_parameters: a failed statement's error (logged with its traceback) would
    # otherwise carry the bound values, the requester's name and the case body with them.
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        future=True,
        hide_parameters=True,
    )


@lru_cache(maxsize=8)
def shared_engine(url: str) -> Engine:
    """One engine (and pool) per URL per process."""
    return make_engine(url)
