"""The worker process: a BullMQ `Worker` dispatching jobs to the handler registry.

Shutdown follows saq's model: SIGTERM/SIGINT only set an event; the main coroutine then stops
fetching, lets in-flight jobs finish within a grace period, force-closes, and closes connections.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from bullmq import Job, Worker
from slack_sdk.web.async_client import AsyncWebClient

from slackq.connection import bullmq_connection, require_noeviction
from slackq.settings import Settings
from worker.registry import HandlerRegistry, JobContext

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """Tuning that tests and operators may change; defaults suit a Heroku worker dyno."""

    grace_seconds: float = 25.0
    lock_duration_ms: int = 30_000
    stalled_interval_ms: int = 30_000
    run_retry_delay_ms: int = 1_000
    allow_eviction: bool = False


class Dispatcher:
    """The BullMQ processor: finds the job's handler and runs it with a bound logger."""

    def __init__(self, registry: HandlerRegistry, slack: AsyncWebClient) -> None:
        self.registry = registry
        self.slack = slack

    async def __call__(self, job: Job, _token: str) -> Any:
        data = job.data if isinstance(job.data, dict) else {"payload": job.data}
        bound = log.bind(
            job_id=job.id,
            job_name=job.name,
            event_id=data.get("event_id"),
            team_id=data.get("team_id"),
            attempt=job.attemptsMade + 1,
        )
        handler = self.registry.get(job.name)
        if handler is None:
            bound.warning("job_ignored", reason="no handler registered")
            return {"ignored": True, "reason": f"no handler for {job.name}"}
        ctx = JobContext(
            name=job.name, job_id=str(job.id), attempt=job.attemptsMade + 1,
            data=data, slack=self.slack, log=bound,
        )
        return await handler(ctx)


def build_worker(settings: Settings, dispatcher: Dispatcher, options: WorkerOptions) -> Worker:
    worker = Worker(
        settings.queue_name,
        dispatcher,
        {
            "connection": bullmq_connection(settings.redis_url),
            "prefix": settings.queue_prefix,
            "concurrency": settings.worker_concurrency,
            "autorun": False,
            "lockDuration": options.lock_duration_ms,
            "stalledInterval": options.stalled_interval_ms,
            "runRetryDelay": options.run_retry_delay_ms,
        },
    )
    _log_worker_events(worker)
    return worker


def _log_worker_events(worker: Worker) -> None:
    """Listen to every event: an `error` with no listener is dropped silently by the port."""

    def on_error(error: Exception, job: Job | None = None) -> None:
        log.error("worker_error", error=repr(error), job_id=getattr(job, "id", None))

    def on_failed(job: Job, error: Exception) -> None:
        log.warning("job_failed", job_id=job.id, job_name=job.name, error=str(error),
                    attempt=job.attemptsMade + 1)

    def on_completed(job: Job, _result: Any) -> None:
        log.info("job_completed", job_id=job.id, job_name=job.name)

    worker.on("error", on_error)
    worker.on("failed", on_failed)
    worker.on("completed", on_completed)


async def run_worker(
    settings: Settings,
    registry: HandlerRegistry,
    options: WorkerOptions | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set (by SIGTERM/SIGINT when not given), then shut down gracefully."""
    options = options or WorkerOptions()
    stop = stop or _stop_on_signals()
    await _check_redis(settings, options)
    slack = AsyncWebClient(token=settings.bot_token(), base_url=settings.slack_api_url)
    worker = build_worker(settings, Dispatcher(registry, slack), options)
    # Load server capabilities before run(): without them short delays round up to ~1 s.
    await worker.blockingRedisConnection.getRedisVersion()
    await worker.redisConnection.getRedisVersion()
    run_task = asyncio.create_task(worker.run(), name="bullmq-worker")
    log.info("worker_started", queue=settings.queue_name, handlers=registry.names(),
             concurrency=settings.worker_concurrency)
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    await shutdown(worker, options.grace_seconds)
    stop_task.cancel()
    await asyncio.gather(run_task, return_exceptions=True)
    log.info("worker_stopped")


async def shutdown(worker: Worker, grace_seconds: float) -> None:
    """Stop fetching; wait for in-flight jobs up to `grace_seconds`; then force-close."""
    log.info("worker_stopping", in_flight=len(worker.jobs), grace_seconds=grace_seconds)
    closing = asyncio.create_task(worker.close())
    done, _ = await asyncio.wait({closing}, timeout=grace_seconds)
    if not done:
        log.warning("worker_force_closing", in_flight=len(worker.jobs))
        await worker.close(force=True)
        await asyncio.gather(closing, return_exceptions=True)


async def _check_redis(settings: Settings, options: WorkerOptions) -> None:
    client = aioredis.Redis(**bullmq_connection(settings.redis_url))
    try:
        await require_noeviction(client, allow_eviction=options.allow_eviction)
    finally:
        await client.aclose()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
