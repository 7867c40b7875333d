"""Database URLs and engines. SQLite is the embedded default; PostgreSQL the scale-out store."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
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
    # A page cache for a database of gigabytes (the default is 2 MiB): fewer reads of
    # index pages that a turn or a status page touches again and again.
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    if isinstance(dbapi_connection, _WriterLockedConnection):
        # Checkpoints run after the writer lock is released (see commit): SQLite's own
        # would run inside COMMIT, so every writer would queue behind the copy and fsync.
        cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


SQLITE_CACHE_KIB = 32 * 1024  # per connection
CHECKPOINT_SECONDS = 0.5
_last_checkpoint: dict[str | None, float] = {}  # lock path -> monotonic time, this process


class _WriterLockedConnection(sqlite3.Connection):
    """A SQLite connection that queues for the write lock on a lock file beside the
    database before BEGIN IMMEDIATE, and leaves the queue after COMMIT or ROLLBACK.

    Why: SQLite's busy handler waits for a held write lock by sleeping 1, 2, 5, ... 25,
    50, 100 ms between tries, so a writer that queues behind a 2 ms transaction often
    sleeps 25 ms or more. With the dispatcher's turns and status sync's pages in two
    processes (or two threads), each spent half its time asleep that way. flock() wakes
    the next writer the moment the lock is released, and the kernel frees it if the
    holder dies. SQLite's own lock still guards every write (a sqlite3 shell, say,
    which does not take the file lock)."""

    lock_path: str | None = None
    _this_thread = threading.local()  # .holder: the connection this thread last locked with

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock_fd: int | None = None
        self._holding = False
        self._held_by: int | None = None  # the thread, while holding (the pool moves us)

    def hold_writer_lock(self) -> None:
        if self.lock_path is None or self._holding:
            return
        holder = getattr(self._this_thread, "holder", None)
        holder = holder() if holder is not None else None
        me = threading.get_ident()
        if holder is not None and holder._held_by == me and holder.lock_path == self.lock_path:
            # It would wait for itself (SQLite's busy timeout only turned that into
            # "database is locked" after 30 s): a bug in the caller, said at once.
            raise RuntimeError(
                "a second write transaction on the same SQLite database in one thread, "
                "while the first is open: finish the first unit of work before the next"
            )
        if self._lock_fd is None:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # blocks with the GIL released
        self._holding, self._held_by = True, me
        self._this_thread.holder = weakref.ref(self)

    def release_writer_lock(self) -> None:
        if self._holding:
            self._holding, self._held_by = False, None
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)  # type: ignore[arg-type]

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_writer_lock()
        self._checkpoint_now_and_then()

    def _checkpoint_now_and_then(self) -> None:
        """Copy the WAL into the database at most every CHECKPOINT_SECONDS per process,
        outside the writer lock: a PASSIVE checkpoint never blocks writers or readers."""
        now = time.monotonic()
        if now - _last_checkpoint.get(self.lock_path, 0.0) < CHECKPOINT_SECONDS:
            return
        _last_checkpoint[self.lock_path] = now
        self.execute("PRAGMA wal_checkpoint(PASSIVE)").close()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_writer_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_writer_lock()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def _locked_connection_class(database_path: str) -> type[_WriterLockedConnection]:
    """The connection class whose writers queue on `<database>.writer-lock`."""
    return type(
        "WriterLockedConnection",
        (_WriterLockedConnection,),
        {"lock_path": str(Path(database_path).expanduser()) + ".writer-lock"},
    )


def _sqlite_begin(conn) -> None:
    # Take the write lock at BEGIN: claims read-then-write and must not interleave.
    dbapi = conn.connection.dbapi_connection
    if isinstance(dbapi, _WriterLockedConnection):
        dbapi.hold_writer_lock()
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        if isinstance(dbapi, _WriterLockedConnection):
            dbapi.release_writer_lock()
        raise


def _sqlite_begin_read(conn) -> None:
    # Readers only need a snapshot; WAL lets them run beside the one writer.
    conn.exec_driver_sql("BEGIN")


def make_engine(url: str | None = None, *, pool_size: int = 10, read_only: bool = False) -> Engine:
    """An engine for `url`. `read_only` engines (SQLite) take no write lock at BEGIN, so
    API reads do not queue behind intake and delivery writes."""
    url = database_url(url)
    if is_sqlite(url):
        path = make_url(url).database
        connect_args: dict = {"timeout": 30, "check_same_thread": False}
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            if not read_only:
                connect_args["factory"] = _locked_connection_class(path)
        engine = create_engine(url, connect_args=connect_args, hide_parameters=True)
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
