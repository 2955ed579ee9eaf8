"""In-process fast paths around the BullMQ port's Worker (same Lua scripts, same data layout).

The port (3.4.4) is ~8x slower than Node BullMQ at draining a queue, for three reasons:

1. After a job completes it calls `moveToFinished` with `fetchNext=0` and then a separate
   `moveToActive` for the next job: two script round trips per job where Node makes one. When the
   queue is nearly empty, the extra `moveToActive` calls are empty polls that burn CPU.
   `FetchNextWorker` passes `fetchNext=1` to the very same `moveToFinished` script (as Node does,
   unless the worker is closing or paused) and processes the job it returns in the same task.
2. Its run loop starts up to `concurrency` fetches at once whenever a job arrives, and each
   calls `moveToActive` until one of them finds the queue empty: at a steady trickle of jobs
   that is up to `concurrency` script calls per job, nearly all empty. `FetchNextWorker`
   fetches in turn, as Node's main loop does (it awaits each fetch before starting the next).
3. It opens redis-py with `single_connection_client=True` and an `asyncio.Lock` around every
   command, so a worker's commands are strictly serial, one round trip at a time.
   `pooled_connection()` gives the Worker a client over a small blocking pool instead, so
   commands of different jobs overlap their round trips (a `LeanConnectionPool`, which costs
   less CPU per command than redis-py's own pools).

Upstream-worthy: all three belong in the port itself (fetch-next in `Worker.processJob`, fetches
in turn in `Worker.run`, a pipelined or pooled connection in `RedisConnection`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from bullmq import Job, Worker

from slackq.connection import BLOCKING, bullmq_connection, redis_client
from slackq.settings import Settings


class FetchNextWorker(Worker):  # type: ignore[misc]  # bullmq ships no type information
    """A port `Worker` that fetches as Node's Worker does: the next job with each completion,
    and one fetch at a time."""

    def __init__(self, name: str, processor: Any, opts: dict[str, Any]) -> None:
        super().__init__(name, processor, opts)
        self._fetched: dict[str, Any] = {}
        self._fetching = asyncio.Lock()
        move_to_completed = self.backend.moveToCompleted

        async def move_to_completed_fetching_next(
            job: Job, return_value: Any, remove_on_complete: Any, token: str,
            fetch_next: bool = False,
        ) -> Any:
            fetch = not (self.closing or self.paused)
            finished = await move_to_completed(job, return_value, remove_on_complete, token,
                                               fetch_next=fetch)
            if fetch:
                self._fetched[token] = finished.get("result")
            return finished

        # The port calls `backend.moveToCompleted(..., fetch_next=False)` from processJob.
        self.backend.moveToCompleted = move_to_completed_fetching_next

    async def getNextJob(self, token: str) -> Job | None:
        """Fetch jobs one at a time, as Node's main loop does: one task waits, the rest queue.

        The port's run loop starts up to `concurrency` fetches at once as soon as one job
        arrives; each calls `moveToActive` while the queue is not known to be drained, so one
        job costs up to `concurrency` script calls, nearly all of them empty, and as many
        tasks. Here the fetches (the blocking wait for the marker included) take turns: after
        the first empty reply the next task blocks for the marker and the others wait their
        turn without touching Redis.
        """
        async with self._fetching:
            if self.closing or self.paused:
                return None
            job: Job | None = await super().getNextJob(token)
            return job

    async def processJob(self, job: Job, token: str) -> None:
        """Process `job`, then each job its completion fetched, in this same task (same token).

        A fetched job is already active and locked for `token`. Processing it here rather than
        handing it back to the port's run loop means a graceful `close()` waits for it: the
        port's teardown waits only for the tasks running when it started, and its run loop stops
        taking jobs once closing, so a job fetched by a completion in flight at that moment
        would stay active until the stalled check. It also spares the run loop a task and an
        `asyncio.wait` over every slot per job. Completions fetch nothing once closing or
        paused, which ends the loop; a forced close cancels it like any processing task.
        """
        next_job: Job | None = job
        while next_job is not None:
            await super().processJob(next_job, token)
            next_job = await self._fetched_job(token)

    async def _fetched_job(self, token: str) -> Job | None:
        fetched = self._fetched.pop(token, None)
        if fetched is None:
            return None
        job_data, job_id, limit_until, delay_until = fetched
        next_job: Job | None = await self.nextJobFromJobData(
            job_data, job_id, limit_until or 0, delay_until or 0, token)
        if next_job is not None:
            self.emit("active", next_job, "waiting")
        return next_job


def pooled_connection(url: str, size: int) -> aioredis.Redis:
    """A client for a Worker's commands and its blocking wait: `size` connections at most.

    The pool blocks (never fails) when all connections are busy. One connection may sit in the
    idle `BZPOPMIN`; the others carry the scripts of different jobs concurrently. It is a
    `LeanConnectionPool` (hiredis packing, no per-command bookkeeping): at 500 jobs/s it saves
    ~7% of a worker process's CPU against redis-py's `BlockingConnectionPool`.
    """
    return redis_client(url, BLOCKING.pooled(size))


def worker_connection(settings: Settings) -> dict[str, Any] | aioredis.Redis:
    """The Worker's `connection` option: the port's own single connection (options), or a pool
    of `WORKER_REDIS_CONNECTIONS` command connections plus one for the blocking wait."""
    if settings.worker_redis_connections > 1:
        return pooled_connection(settings.redis_url, settings.worker_redis_connections + 1)
    return bullmq_connection(settings.redis_url)
