"""The harness's traffic: paced producers and BullMQ workers, both writing to the ledger.

BullMQ's `Queue` and `Worker` are used directly (not slackq's producers/worker packages) so the
harness measures Redis + BullMQ, not the application. The port's pitfalls are handled here:
`socket_timeout=None` for the workers' blocking connection, capabilities loaded before `run()`,
an `error` listener, a bounded `close()`, and short retries instead of the port's ~350 s. Its
clients come from slackq's factory (`slackq.connection.redis_client`) with the profiles below.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from bullmq import Job, Queue, Worker
from redis.exceptions import RedisError

from harness.ledger import Ledger
from slackq.bullmq_seam import load_server_capabilities, set_worker_retry
from slackq.connection import Profile, RedisRetry, bullmq_connection, redis_client

log = structlog.get_logger(__name__)

JOB_NAME = "durability-probe"


@dataclass(frozen=True)
class TrafficConfig:
    """Shape of the load; the defaults suit a short campaign on a small machine."""

    queue: str = "durability"
    prefix: str = "bull"
    jobs: int = 3000
    duration: float = 10.0
    producers: int = 4
    workers: int = 2
    concurrency: int = 8
    # Delayed jobs sit in Redis for seconds before a worker may take them: they make any loss of
    # older acknowledged writes visible (an `appendfsync no` power loss, `appendonly no` crash).
    delayed_fraction: float = 0.25
    max_delay_ms: int = 4000
    max_work_ms: int = 4
    lock_duration_ms: int = 3000
    stalled_interval_ms: int = 1000


def job_id(number: int) -> str:
    """Deterministic, valid for Node BullMQ too: not integer-like and without ':'."""
    return f"dur-{number:06d}"


@dataclass(frozen=True)
class PlannedJob:
    job_id: str
    delay_ms: int
    work_ms: int


def plan_jobs(config: TrafficConfig, seed: int) -> list[PlannedJob]:
    """The campaign's jobs, identical for the same seed."""
    rng = random.Random(seed)
    planned = []
    for number in range(config.jobs):
        delayed = rng.random() < config.delayed_fraction
        delay = rng.randint(200, config.max_delay_ms) if delayed else 0
        planned.append(PlannedJob(job_id(number), delay, rng.randint(0, config.max_work_ms)))
    return planned


# A retry measured in tenths of a second, not the port's ~350 s.
SHORT_RETRY = RedisRetry(2, "exponential", base=0.02, cap=0.2)
# Rides out a restart (~0.1-0.5 s of refused connections, then LOADING) in ~3 s at most. The port
# moves a job whose processor succeeded to *failed* when `moveToFinished` raises, even for a
# connection or LOADING error, so the workers' commands client retries a little longer.
RESTART_RETRY = RedisRetry(8, "exponential", base=0.05, cap=0.5)

# The harness's client profiles (slackq.connection explains the fields).
PRODUCER = Profile("harness producer", socket_timeout=2.0, connect_timeout=1.0,
                   retry=SHORT_RETRY)
DRAIN = Profile("harness drain", socket_timeout=2.0, connect_timeout=5.0, retry=SHORT_RETRY)
READER = Profile("harness reader", socket_timeout=5.0, connect_timeout=5.0, retry=None)


class ErrorStreak:
    """Log a connection-error streak once when it starts and once when it ends."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0
        self.total = 0

    def error(self, exc: BaseException) -> None:
        if self.count == 0:
            log.warning("redis_error_streak_started", source=self.source,
                        error=f"{type(exc).__name__}: {exc}"[:200])
        self.count += 1
        self.total += 1

    def ok(self) -> None:
        if self.count:
            log.info("redis_error_streak_ended", source=self.source, errors=self.count)
            self.count = 0


class Producers:
    """`producers` tasks adding the planned jobs at an even pace; each id is retried until acked."""

    def __init__(self, url: str, ledger: Ledger, config: TrafficConfig,
                 planned: list[PlannedJob]) -> None:
        self.url = url
        self.ledger = ledger
        self.config = config
        self.planned = planned
        self.acked: set[str] = set()
        self.stop_adding = asyncio.Event()
        self.abandon = asyncio.Event()
        self.errors = ErrorStreak("producer")
        self._numbers = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._tasks = [asyncio.create_task(self._run(index), name=f"producer-{index}")
                       for index in range(self.config.producers)]

    async def finish(self, grace: float) -> None:
        """Stop taking new ids, let current ids be acked within `grace` s, then abandon them."""
        self.stop_adding.set()
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        if pending:
            self.abandon.set()
            await asyncio.gather(*pending, return_exceptions=True)

    def _queue(self) -> Queue:
        return Queue(self.config.queue, {"connection": redis_client(self.url, PRODUCER),
                                         "prefix": self.config.prefix})

    async def _run(self, index: int) -> None:
        queue = self._queue()
        pace = self.config.duration / max(1, self.config.jobs)
        loop = asyncio.get_running_loop()
        try:
            for number in self._numbers:
                if number >= len(self.planned) or self.stop_adding.is_set():
                    return
                wait = self._t0 + number * pace - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._add_until_acked(queue, self.planned[number])
        finally:
            await queue.close()

    async def _add_until_acked(self, queue: Queue, job: PlannedJob) -> None:
        opts: dict[str, Any] = {"jobId": job.job_id}
        if job.delay_ms:
            opts["delay"] = job.delay_ms
        for attempt in itertools.count(1):
            if self.abandon.is_set():
                return
            sent_at = self.ledger.sent(job.job_id, attempt)
            try:
                await queue.add(JOB_NAME, {"id": job.job_id, "work_ms": job.work_ms}, opts)
            except (RedisError, OSError) as exc:
                self.errors.error(exc)
                await asyncio.sleep(min(0.5, 0.02 * attempt))
                continue
            self.errors.ok()
            self.ledger.acked(job.job_id, sent_at)
            self.acked.add(job.job_id)
            return


class Workers:
    """`workers` BullMQ Workers in this process; each execution appends an `effect`."""

    def __init__(self, url: str, ledger: Ledger, config: TrafficConfig) -> None:
        self.url = url
        self.ledger = ledger
        self.config = config
        self.started: set[str] = set()
        self.errors = ErrorStreak("worker")
        self._workers: list[Worker] = []
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        for index in range(self.config.workers):
            worker = self._build(f"w{index}")
            await load_server_capabilities(worker)
            self._workers.append(worker)
            self._tasks.append(asyncio.create_task(worker.run(), name=f"worker-{index}"))

    def _build(self, name: str) -> Worker:
        async def process(job: Job, _token: str) -> None:
            self.started.add(str(job.id))
            work_ms = int((job.data or {}).get("work_ms", 0))
            if work_ms:
                await asyncio.sleep(work_ms / 1000)
            attempt = int(getattr(job, "attemptsStarted", 0) or job.attemptsMade + 1)
            self.ledger.effect(str(job.id), attempt, name)

        worker = Worker(self.config.queue, process, {
            "connection": bullmq_connection(self.url),
            "prefix": self.config.prefix,
            "concurrency": self.config.concurrency,
            "autorun": False,
            "name": name,
            "lockDuration": self.config.lock_duration_ms,
            "stalledInterval": self.config.stalled_interval_ms,
            # A job in flight at every kill may stall many times; it must come back, not fail.
            "maxStalledCount": 1000,
            "runRetryDelay": 200,
        })
        set_worker_retry(worker, RESTART_RETRY.build(), blocking=SHORT_RETRY.build())
        worker.on("error", lambda error, *_: self.errors.error(error))
        worker.on("completed", lambda *_: self.errors.ok())
        return worker

    async def close(self, grace: float = 5.0) -> None:
        """Close every worker; force-close whatever is still busy after `grace` seconds."""
        for worker in self._workers:
            closing = asyncio.create_task(worker.close())
            done, _ = await asyncio.wait({closing}, timeout=grace)
            if not done:
                await worker.close(force=True)
                await asyncio.gather(closing, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)


QUEUE_STATES = {"wait": "llen", "active": "llen", "paused": "llen",
                "delayed": "zcard", "prioritized": "zcard", "waiting-children": "zcard"}


async def pending_counts(client: aioredis.Redis, config: TrafficConfig) -> dict[str, int]:
    """Jobs not yet finished, per BullMQ state, read straight from the queue's keys."""
    counts = {}
    for state, command in QUEUE_STATES.items():
        key = f"{config.prefix}:{config.queue}:{state}"
        counts[state] = int(await getattr(client, command)(key))
    return {state: count for state, count in counts.items() if count}


async def drain(url: str, config: TrafficConfig, within: float) -> dict[str, int]:
    """Wait until wait/active/delayed/... are empty twice in a row; return what is left."""
    client = redis_client(url, DRAIN)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    left: dict[str, int] = {"unknown": 1}
    empty_reads = 0
    try:
        while loop.time() < deadline:
            try:
                left = await pending_counts(client, config)
            except RedisError as exc:
                left = {"unreachable": 1}
                log.warning("drain_read_failed", error=str(exc)[:200])
            empty_reads = 0 if left else empty_reads + 1
            if empty_reads >= 2:
                return {}
            await asyncio.sleep(0.25)
        return left
    finally:
        await client.aclose()


async def failed_jobs(url: str, config: TrafficConfig) -> dict[str, str]:
    """Ids in BullMQ's failed set with their failedReason: accounted for, not lost."""
    client = redis_client(url, READER)
    try:
        ids = await client.zrange(f"{config.prefix}:{config.queue}:failed", 0, -1)
        reasons = {}
        for job in map(str, ids):
            reason = await client.hget(f"{config.prefix}:{config.queue}:{job}", "failedReason")
            reasons[job] = str(reason or "")
        return reasons
    finally:
        await client.aclose()
