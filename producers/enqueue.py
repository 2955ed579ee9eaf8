"""Putting jobs on the BullMQ queue within a time budget: a 200 to Slack means the job is stored.

`Enqueuer.add` retries what may pass (connection refused or reset, a timeout, `LOADING`, a
read-only replica during fail-over) with jittered exponential backoff, all inside one budget that
keeps Slack's 3-second limit out of reach; then it gives up with `RedisUnavailable` (the webhook
answers 503 and Slack redelivers). Retrying is safe: the job id makes a second `add` of a job that
was in fact stored a no-op, and BullMQ's Lua script makes concurrent adds of one id store one job.

Under `ACK_DURABILITY` other than `memory` a stored job is also confirmed (`producers/ack.py`)
before `add` returns, within the same budget; not confirmed: `RedisUnavailable` too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog
from bullmq import Queue
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    wait_random_exponential,
)

from producers.ack import AckNotConfirmed, confirmer_for
from producers.batching import AddBatcher
from producers.jobs import SlackJob
from producers.metrics import observe_enqueue
from slackq.connection import PRODUCER, redis_client
from slackq.contract import JobOptions
from slackq.errors import RedisUnavailable
from slackq.job_index import JobIndex, retention_seconds
from slackq.sentinel_pool import recheck_primary
from slackq.settings import Settings

log = structlog.get_logger(__name__)

# BusyLoadingError (LOADING) and MaxConnectionsError are ConnectionErrors.
RETRYABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError,
)


@dataclass(frozen=True)
class EnqueuePolicy:
    """How long one `add` may take in all, and how it retries within that time (`WEBHOOK_*`)."""

    budget_seconds: float  # retries included; Slack gives up after 3 s
    attempt_timeout: float  # socket timeout of one Redis command (and of connecting)
    backoff_seconds: float  # first wait between attempts (jittered, doubling)
    backoff_max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> EnqueuePolicy:
        return cls(
            budget_seconds=settings.webhook_enqueue_budget_seconds,
            attempt_timeout=settings.webhook_redis_timeout_seconds,
            backoff_seconds=settings.webhook_retry_backoff_seconds,
            backoff_max_seconds=settings.webhook_retry_backoff_max_seconds,
        )

    def retrying(self) -> AsyncRetrying:
        """A tenacity controller for one `add` (stops before a wait would overrun the budget)."""
        return AsyncRetrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=stop_before_delay(self.budget_seconds - self.attempt_timeout),
            wait=wait_random_exponential(multiplier=self.backoff_seconds,
                                         max=self.backoff_max_seconds),
            before_sleep=_log_retry,
            reraise=True,
        )


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("enqueue_retry", attempt=state.attempt_number + 1, error=type(error).__name__)


def _log_retry_of(error: BaseException) -> None:
    log.warning("enqueue_retry", attempt=1, error=type(error).__name__)


class Enqueuer:
    """Owns the producer's BullMQ `Queue` and stores Slack jobs on it within `policy`'s budget."""

    def __init__(self, settings: Settings, policy: EnqueuePolicy | None = None) -> None:
        self.policy = policy or EnqueuePolicy.from_settings(settings)
        self._client = redis_client(settings.redis_url,
                                    PRODUCER.with_timeout(self.policy.attempt_timeout))
        self.queue = Queue(
            settings.queue_name,
            {"connection": self._client, "prefix": settings.queue_prefix},
        )
        self._batcher = AddBatcher(self.queue)
        self._confirmer = confirmer_for(settings, self.policy.attempt_timeout)
        self.job_options = JobOptions.from_settings(settings)
        self.index = JobIndex(self._client, settings.queue_prefix, settings.queue_name,
                              retention_seconds(settings.job_keep_completed_seconds,
                                                settings.job_keep_failed_seconds))

    async def add(self, job: SlackJob) -> str:
        """Store `job`; return the stored job's id. Raise RedisUnavailable if not stored in time.

        A job whose id is already stored returns that id and stores nothing new.
        """
        started = time.monotonic()
        options = self.job_options.for_job(job.job_id)
        try:
            async with asyncio.timeout(self.policy.budget_seconds):
                try:  # the common case, without tenacity's per-call set-up (~100 us a request)
                    stored_id = await self._batcher.add(job.name, job.data, options)
                except RETRYABLE as exc:
                    with structlog.contextvars.bound_contextvars(**job.log_context,
                                                                 job_id=job.job_id):
                        _log_retry_of(exc)
                        async for attempt in self.policy.retrying():
                            with attempt:
                                stored_id = await self._batcher.add(job.name, job.data, options)
                if self._confirmer is not None:
                    await self._confirm(stored_id)
        except TimeoutError as exc:
            raise RedisUnavailable(f"job {job.job_id} not stored within the budget") from exc
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"job {job.job_id} not stored: {type(exc).__name__}") from exc
        observe_enqueue(job.name, time.monotonic() - started)
        # For the dashboard's search: written in the background, never fails the request.
        self.index.record_soon(stored_id, job.name, job.data)
        return stored_id

    async def _confirm(self, job_id: str) -> None:
        """Confirm as ACK_DURABILITY asks; unconfirmed, look for a new primary before the 503.

        A primary cut off from its replicas still takes the adds, but `WAIT` cannot complete:
        the next attempt (Slack's redelivery) should go to whichever primary the sentinels
        promoted meanwhile.
        """
        assert self._confirmer is not None
        try:
            await self._confirmer.confirm(job_id)
        except AckNotConfirmed:
            await recheck_primary(self._client)
            await recheck_primary(self._confirmer.client)
            raise

    async def ping(self) -> bool:
        """Whether Redis answers PING within one attempt's timeout."""
        try:
            return bool(await asyncio.wait_for(self._client.ping(), self.policy.attempt_timeout))
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.index.flush()
        await self.queue.close()
        if self._confirmer is not None:
            await self._confirmer.client.aclose()
