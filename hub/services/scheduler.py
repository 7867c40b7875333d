"""Periodic jobs: APScheduler is each process's clock; the database decides who runs.

Every process that runs a scheduler fires every job, but a run first inserts
``(job, slot)`` into ``job_runs`` (unique): one process wins, the others skip. APScheduler's
own job store is never shared (its FAQ: "You can't"); jobs live in memory.

Slots are fixed by the wall clock, not by when a process fires: interval jobs are aligned
to the epoch grid and the slot is the nearest grid point (so jitter of a few seconds
between processes names the same slot); the nightly reconcile's slot is the UTC date.

Jobs: ``poll:<department>`` every ``poll_interval_seconds`` for departments with
``status_poll``; ``reconcile`` daily at ``reconcile_at`` (HH:MM UTC); and the plugins'
jobs (``hub_periodic_jobs``), each under its own name on the same epoch grid.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from hub.adapters import DeliveryError
from hub.model import PeriodicJob, utcnow
from hub.services.runtime import Hub
from hub.services.sync import StatusSync

log = logging.getLogger(__name__)

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# Per process: one run of a job at a time; firings missed while busy coalesce into one, and
# one more than 30 s late is dropped (the next slot comes soon).
_JOB_DEFAULTS: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 30}


def interval_slot(now: datetime, seconds: float) -> str:
    """The grid point nearest `now`: processes firing a little apart agree on it."""
    return str(round((now - EPOCH).total_seconds() / seconds))


def daily_slot(now: datetime) -> str:
    return now.astimezone(UTC).date().isoformat()


class Scheduler:
    def __init__(
        self,
        hub: Hub,
        *,
        worker_id: str,
        clock: Callable[[], datetime] = utcnow,
        poll_interval: float | None = None,
    ) -> None:
        self.hub = hub
        self.worker_id = worker_id
        self.clock = clock
        self.poll_interval = poll_interval  # override of every department's (tests)
        self.sync = StatusSync(hub, clock=clock)
        self.ran: list[tuple[str, str]] = []  # (job, slot) this process won
        self._scheduler: AsyncIOScheduler | None = None

    # ----------------------------------------------------------------------- claiming

    async def run_claimed(self, job: str, slot: str, work: Callable[[], Awaitable[Any]]) -> bool:
        """Run `work` if this process claims (job, slot); record how it ended."""
        claiming = asyncio.ensure_future(asyncio.to_thread(self._claim, job, slot))
        try:
            won = await asyncio.shield(claiming)
        except asyncio.CancelledError:  # stopping while the claim commits in its thread
            if await claiming:  # it won: the slot is ours, so say how it ended
                self.ran.append((job, slot))
                await asyncio.to_thread(self._finish, job, slot, "cancelled", {})
            raise
        if not won:
            return False
        self.ran.append((job, slot))
        outcome, detail = "ok", {}
        try:
            result = await work()
            detail = _detail(result)
        except asyncio.CancelledError:  # the process is stopping: say so, then stop
            await asyncio.to_thread(self._finish, job, slot, "cancelled", {})
            raise
        except DeliveryError as exc:  # the department failed, classified: one line is enough
            log.warning("scheduled job %s/%s failed: %s", job, slot, exc.message)
            outcome, detail = "failed", {"error": f"{type(exc).__name__}: {exc}"[:500]}
        except Exception as exc:  # recorded on the run; the next slot tries again
            log.exception("scheduled job %s/%s failed", job, slot)
            outcome, detail = "failed", {"error": f"{type(exc).__name__}: {exc}"[:500]}
        await asyncio.to_thread(self._finish, job, slot, outcome, detail)
        return True

    def _claim(self, job: str, slot: str) -> bool:
        with self.hub.uow() as uow:
            won = uow.job_runs.claim(job, slot, worker=self.worker_id)
            uow.commit()
        return won

    def _finish(self, job: str, slot: str, outcome: str, detail: dict[str, Any]) -> None:
        with self.hub.uow() as uow:
            uow.job_runs.finish(job, slot, outcome=outcome, detail=detail)
            uow.commit()

    # ----------------------------------------------------------------------- jobs

    def interval(self, department: str) -> float:
        if self.poll_interval is not None:
            return self.poll_interval
        return self.hub.config.departments[department].poll_interval_seconds

    async def run_interval(
        self, job: str, seconds: float, work: Callable[[], Awaitable[Any]]
    ) -> bool:
        """One firing of an interval job: claim the slot of now on the epoch grid (every
        process firing about now names the same one), and run `work` if this process won."""
        return await self.run_claimed(job, interval_slot(self.clock(), seconds), work)

    async def poll(self, department: str) -> bool:
        return await self.run_interval(
            f"poll:{department}", self.interval(department), lambda: self.sync.poll(department)
        )

    async def reconcile(self) -> bool:
        from hub.services.reconcile import Reconciler

        async def work() -> Any:
            return await Reconciler(self.hub, clock=self.clock).run(heal=False)

        return await self.run_claimed("reconcile", daily_slot(self.clock()), work)

    def plugin_jobs(self) -> list[PeriodicJob]:
        jobs = [
            j for found in self.hub.pm.hook.hub_periodic_jobs(hub=self.hub) for j in found or []
        ]
        names = [job.name for job in jobs]
        if len(names) != len(set(names)):
            raise ValueError(f"two plugins declare the same periodic job name: {sorted(names)}")
        return jobs

    async def periodic(self, job: PeriodicJob) -> bool:
        return await self.run_interval(job.name, job.every_seconds, lambda: job.run(self.hub))

    # ----------------------------------------------------------------------- the clock

    def start(self) -> AsyncIOScheduler:
        """Add the jobs to an in-memory AsyncIOScheduler on the running loop and start it."""
        scheduler = AsyncIOScheduler(timezone=UTC)
        for department in self.sync.pollable():
            _every(
                scheduler, self.interval(department), self.poll, department, f"poll:{department}"
            )
        for job in self.plugin_jobs():
            _every(scheduler, job.every_seconds, self.periodic, job, f"plugin:{job.name}")
        hour, minute = (int(p) for p in self.hub.config.reconcile_at.split(":"))
        scheduler.add_job(
            self.reconcile,
            CronTrigger(hour=hour, minute=minute, timezone=UTC),
            id="reconcile",
            **{**_JOB_DEFAULTS, "misfire_grace_time": 3600},
        )
        scheduler.start()
        self._scheduler = scheduler
        return scheduler

    def shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None


def _every(
    scheduler: AsyncIOScheduler,
    seconds: float,
    run: Callable[[Any], Awaitable[bool]],
    arg: Any,
    job_id: str,
) -> None:
    """Fire ``run(arg)`` every `seconds`, on the epoch grid (so the slot names agree)."""
    scheduler.add_job(
        run,
        IntervalTrigger(seconds=seconds, start_date=EPOCH, timezone=UTC),
        args=[arg],
        id=job_id,
        **_JOB_DEFAULTS,
    )


def _detail(result: Any) -> dict[str, Any]:
    if isinstance(result, dict):
        return result
    as_dict = getattr(result, "as_dict", None)
    if callable(as_dict):
        data = as_dict()
        return (
            {k: v for k, v in data.items() if k != "departments"} if "departments" in data else data
        )
    return {}
