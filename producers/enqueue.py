"""Putting jobs on the BullMQ queue, bounded in time: a 200 to Slack means the job is stored."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from bullmq import Queue
from redis.exceptions import RedisError

from slackq.connection import producer_client
from slackq.contract import job_options
from slackq.errors import RedisUnavailable
from slackq.settings import Settings

log = structlog.get_logger(__name__)


class Enqueuer:
    """Owns the producer's BullMQ `Queue` and adds Slack jobs to it within a time budget."""

    def __init__(self, settings: Settings, *, budget_seconds: float = 2.0) -> None:
        self._client = producer_client(settings.redis_url)
        self.queue = Queue(
            settings.queue_name,
            {"connection": self._client, "prefix": settings.queue_prefix},
        )
        self.budget_seconds = budget_seconds

    async def add(self, name: str, data: dict[str, Any], job_id: str) -> str:
        """Store one job; return its id. Raise RedisUnavailable if it is not stored in the budget.

        The same `job_id` added twice returns the first job's id and stores nothing new.
        """
        try:
            job = await asyncio.wait_for(
                self.queue.add(name, data, job_options(job_id)), self.budget_seconds
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"job {job_id} not stored: {type(exc).__name__}") from exc
        return str(job.id)

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._client.ping(), self.budget_seconds))
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.queue.close()
