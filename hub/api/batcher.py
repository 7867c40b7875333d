"""Group commit for intake: concurrent POSTs share one transaction (one fsync).

One writer task takes whatever requests are waiting, submits them with
`IntakeService.submit_many` in a worker thread and answers each after the commit, so a
201 still means durable. No timer: a lone request goes at once, a burst forms a batch.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from hub.model import Case
from hub.services.intake import IntakeResult, IntakeService

log = logging.getLogger(__name__)

MAX_BATCH = 128

_Item = tuple[Case, str | None, asyncio.Future[IntakeResult]]


def _sqlite_lock_path(intake: IntakeService) -> Path | None:
    url = intake.hub.engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).expanduser().with_name(Path(url.database).name + ".intake-lock")


class IntakeBatcher:
    def __init__(self, intake: IntakeService, *, max_batch: int = MAX_BATCH) -> None:
        self.intake = intake
        self.max_batch = max_batch
        # SQLite has one writer: with several server processes (hub serve --workers N) their
        # batch writers queue on a file lock, woken at once on release, instead of polling
        # in SQLite's busy handler (sleeps of up to 100 ms: the p99).
        self._lock_path = _sqlite_lock_path(intake)
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, case: Case, token: str | None) -> IntakeResult:
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(self._queue), name="intake-batcher")
        future: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        assert self._queue is not None
        self._queue.put_nowait((case, token, future))
        # shield: a client hanging up must not cancel a batch other requests wait for
        return await asyncio.shield(future)

    async def _run(self, queue: asyncio.Queue[_Item]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[_Item]) -> None:
        cases = [case for case, _, _ in batch]
        tokens = [token for _, token, _ in batch]
        try:
            results = await run_in_threadpool(self._submit, cases, tokens)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][2].done():
                    batch[0][2].set_exception(exc)
                return
            # One bad case must not fail its neighbours: retry them one by one.
            log.warning("intake batch of %d failed; retrying one by one", len(batch))
            for item in batch:
                await self._commit([item])
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _submit(self, cases: list[Case], tokens: list[str | None]) -> list[IntakeResult]:
        with self._writer_lock():
            return self.intake.submit_many(cases, tokens=tokens)

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        with open(self._lock_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
