"""SQLite writers queue on a lock file (hub/store/db.py, decision 0014): a waiting writer
starts the moment the holder commits or rolls back, a holder killed with SIGKILL frees
it, readers never take it, and a second write transaction in one thread fails at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from hub.store.db import make_engine
from hub.store.uow import UnitOfWork

HOLD_SCRIPT = """
import sys, time
from sqlalchemy import text
from hub.store.db import make_engine
engine = make_engine(sys.argv[1])
with engine.connect() as conn:
    conn.execute(text("INSERT INTO marks (who) VALUES ('child')"))
    print("holding", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE marks (n INTEGER PRIMARY KEY, who TEXT)"))
    engine.dispose()
    return url


def _mark(engine, who: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO marks (who) VALUES (:who)"), {"who": who})


def _marks(engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT who FROM marks ORDER BY n"))]


def test_the_lock_file_sits_beside_the_database(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    _mark(engine, "a")
    assert (tmp_path / "hub.db.writer-lock").exists()
    engine.dispose()


def test_a_waiting_writer_starts_after_the_holder_commits(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO marks (who) VALUES ('first')"))
            holding.set()
            release.wait(10)

    first = threading.Thread(target=holder)
    first.start()
    assert holding.wait(10)
    second = threading.Thread(target=_mark, args=(engine, "second"))
    second.start()
    second.join(0.3)
    assert second.is_alive(), "the second writer must wait for the first to commit"
    release.set()
    first.join(10)
    second.join(10)
    assert not second.is_alive()
    assert _marks(engine) == ["first", "second"]
    engine.dispose()


def test_a_rolled_back_or_failed_unit_of_work_frees_the_lock(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with pytest.raises(ZeroDivisionError), UnitOfWork(engine) as uow:
        uow.connection.execute(text("INSERT INTO marks (who) VALUES ('lost')"))
        1 / 0  # noqa: B018  (the unit of work ends in an exception)
    with UnitOfWork(engine) as uow:
        uow.connection.execute(text("INSERT INTO marks (who) VALUES ('rolled back')"))
        uow.rollback()
    done = threading.Thread(target=_mark, args=(engine, "next"))
    done.start()
    done.join(10)
    assert not done.is_alive(), "a writer in another thread must not wait for a finished one"
    assert _marks(engine) == ["next"]
    engine.dispose()


def test_a_second_write_transaction_in_one_thread_fails_at_once(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    started = time.perf_counter()
    with UnitOfWork(engine) as outer:
        outer.connection.execute(text("INSERT INTO marks (who) VALUES ('outer')"))
        with (
            pytest.raises(RuntimeError, match="second write transaction"),
            UnitOfWork(engine) as inner,
        ):
            inner.connection.execute(text("INSERT INTO marks (who) VALUES ('inner')"))
        outer.commit()
    # SQLite's busy timeout alone would have waited 30 s before "database is locked".
    assert time.perf_counter() - started < 10
    assert _marks(engine) == ["outer"]
    engine.dispose()


def test_a_connection_the_pool_moved_to_another_thread_is_waited_for(sqlite_url: str) -> None:
    """Thread A's last connection, back in the pool, now holds the lock for thread B: A's
    next writer waits for B like any writer (not the one-thread error)."""
    engine = make_engine(sqlite_url)
    _mark(engine, "a1")  # this thread used the pool's one connection and gave it back
    holding, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        with engine.begin() as conn:  # takes the same pooled connection
            conn.execute(text("INSERT INTO marks (who) VALUES ('b')"))
            holding.set()
            release.wait(10)

    b = threading.Thread(target=other_thread)
    b.start()
    assert holding.wait(10)
    threading.Timer(0.2, release.set).start()
    _mark(engine, "a2")  # waits for b, then writes
    b.join(10)
    assert _marks(engine) == ["a1", "b", "a2"]
    engine.dispose()


def test_readers_do_not_queue_behind_a_writer(sqlite_url: str) -> None:
    engine, reader = make_engine(sqlite_url), make_engine(sqlite_url, read_only=True)
    _mark(engine, "committed")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO marks (who) VALUES ('open')"))
        seen: list[list[str]] = []
        read = threading.Thread(target=lambda: seen.append(_marks(reader)))
        read.start()
        read.join(5)
        assert not read.is_alive(), "a read-only engine must not wait for the writer"
    assert seen == [["committed"]]
    engine.dispose()
    reader.dispose()


def test_a_writer_killed_with_sigkill_frees_the_lock(sqlite_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, sqlite_url],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
        engine = make_engine(sqlite_url)
        waiter = threading.Thread(target=_mark, args=(engine, "after"))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive(), "the writer must wait while the child holds the lock"
        child.send_signal(signal.SIGKILL)
        waiter.join(20)
        assert not waiter.is_alive()
        assert _marks(engine) == ["after"]  # the child's insert died with it
        engine.dispose()
    finally:
        child.kill()
        child.wait(10)
