"""The worker's share of the dashboard's wait-time history (slackq/wait_history.py).

Writing each job's wait as it starts would cost commands on every job's hot path (and a round
trip for a job that fails, whose end is the port's own script). Instead a process adds each
job's wait to per-minute sums in memory when the port reports the job active (its `active`
event: no Redis command) and sends what it summed once every `FLUSH_SECONDS`, as one pipeline
(2 commands per minute it covers, 1 more for the longest wait, 2 per hour touched), and once
more when it stops. Nothing is added to the completion's transaction.

A batch Redis refuses is dropped, not sent again: the pipeline is not a transaction (its keys
may live on different Redis Cluster nodes), so a retry could count part of it twice; a chart
may undercount during an outage, never overcount. A process killed with SIGKILL loses at most
its last `FLUSH_SECONDS`. `MAX_MINUTES` bounds what a process holds while Redis is away.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
import structlog
from bullmq import Job, Worker
from redis.exceptions import RedisError

from slackq.wait_history import MinuteWaits, WaitKeys, write_commands

log = structlog.get_logger(__name__)

FLUSH_SECONDS = 5.0
MAX_MINUTES = 120  # minutes held in memory at most (the oldest are dropped first)


class WaitRecorder:
    """Per-minute waits of the jobs this process started, flushed in batches."""

    def __init__(self, client: aioredis.Redis, prefix: str, queue: str,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        self.client = client
        self.keys = WaitKeys(prefix, queue)
        self.flush_seconds = flush_seconds
        self.pending: dict[int, MinuteWaits] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, job: Job, _prev: str = "") -> None:
        """A job became active: count its wait if this is its first start."""
        if int(job.attemptsStarted or 0) != 1 or not job.processedOn or not job.timestamp:
            return
        started_ms, stored_ms = int(job.processedOn), int(job.timestamp)
        minute = started_ms // 60_000 * 60
        self.pending.setdefault(minute, MinuteWaits()).add(max(0, started_ms - stored_ms))
        if len(self.pending) > MAX_MINUTES:
            del self.pending[min(self.pending)]

    def attach(self, worker: Worker) -> None:
        """Listen to `worker`'s `active` event and start the flushing loop."""
        worker.on("active", self.note)
        self._task = asyncio.create_task(self._loop(), name="wait-history")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    async def flush(self) -> int:
        """Send what is pending (one round trip); the number of minutes sent."""
        batch, self.pending = self.pending, {}
        if not batch:
            return 0
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for command in write_commands(self.keys, batch):
                    pipe.execute_command(*command)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("wait_history_dropped", minutes=len(batch), error=type(exc).__name__)
            return 0
        return len(batch)

    async def close(self) -> None:
        """Stop the loop and send what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
