"""The worker process: a BullMQ `Worker` dispatching jobs to the handler registry.

Shutdown follows saq's model: SIGTERM/SIGINT only set an event; the main coroutine then stops
fetching, lets in-flight jobs finish within a grace period, force-closes, and closes connections.

Composable for supervisors: `start_worker()` returns a running `WorkerRuntime` (several may share
one event loop); `run_worker()` is start + wait for a stop event + `runtime.stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import redis.asyncio as aioredis
import structlog
from bullmq import DelayedError, Job, UnrecoverableError, Worker
from pydantic import ValidationError
from slack_sdk.web.async_client import AsyncWebClient
from structlog.typing import FilteringBoundLogger

from slackq.bullmq_seam import (
    FetchNextWorker,
    complete_with,
    in_flight_jobs,
    load_server_capabilities,
    renew_locks_until_jobs_end,
    set_retry_delay,
    set_worker_retry,
)
from slackq.connection import command_profile, command_retry, redis_client, require_noeviction
from slackq.models import Envelope, parse_envelope, team_of
from slackq.retry_policy import RetryPolicy
from slackq.settings import Settings
from worker.completion import Completion
from worker.context import JobContext, JobSlack
from worker.effects import EffectLog, EffectRun
from worker.errors import (
    Deferred,
    InvalidPayload,
    PacingLimited,
    PermanentError,
    RedisTransientError,
)
from worker.fetch_turn import FetchTurn
from worker.limiter import Limiter, Limits
from worker.metrics import instrument_worker, record_deferred
from worker.outage import RedisOutage, is_transient
from worker.pool import client_name, worker_connection, worker_name
from worker.registry import HandlerRegistry
from worker.retry import defer_delay_ms
from worker.slack import make_client, open_session
from worker.waits import WaitRecorder

if TYPE_CHECKING:
    from worker.tokens import WorkspaceTokens

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """The worker's timings and pacing, taken from the settings (`from_settings`).

    A separate object so that tests and embedders can change one value of a running
    configuration (`dataclasses.replace(WorkerOptions.from_settings(settings), grace_seconds=3)`)
    without going through the environment. The defaults live in `Settings` alone;
    docs/worker.md ("Timings, and why") explains them.
    """

    grace_seconds: float
    lock_duration_ms: int
    stalled_interval_ms: int
    run_retry_delay_ms: int
    max_stalled_count: int
    allow_eviction: bool
    limits: Limits

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerOptions:
        return cls(
            grace_seconds=settings.worker_grace_seconds,
            lock_duration_ms=settings.worker_lock_duration_ms,
            stalled_interval_ms=settings.worker_stalled_interval_ms,
            run_retry_delay_ms=settings.worker_run_retry_delay_ms,
            max_stalled_count=settings.worker_max_stalled_count,
            allow_eviction=settings.allow_eviction,
            limits=Limits.from_settings(settings),
        )


class Dispatcher:
    """The BullMQ processor: validates, runs the handler, maps errors to BullMQ outcomes."""

    def __init__(
        self,
        registry: HandlerRegistry,
        slack: AsyncWebClient,
        *,
        limiter: Limiter | None = None,
        effects: EffectLog | None = None,
        outage: RedisOutage | None = None,
        rand: Callable[[], float] = random.random,
        tokens: WorkspaceTokens | None = None,
    ) -> None:
        self.registry = registry
        self.slack = slack
        self.limiter = limiter
        self.effects = effects
        self.outage = outage or RedisOutage()
        self.completion = Completion(effects, self.outage)
        self.rand = rand
        self.tokens = tokens  # multi-workspace mode: a token per installation

    async def __call__(self, job: Job, token: str) -> Any:
        data = job.data if isinstance(job.data, dict) else {"payload": job.data}
        fields = {"job_id": job.id, "job_name": job.name, "event_id": data.get("event_id"),
                  "team_id": data.get("team_id"), "attempt": job.attemptsMade + 1}
        # Also bound for the rest of this job's task, so the worker's event listeners log them;
        # cleared first: the task may have run the previous job (and its handler's
        # `ctx.annotate` fields).
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**fields)
        bound = log.bind(**fields)
        handler = self.registry.get(job.name)
        if handler is None:
            bound.warning("job_ignored", reason="no handler registered")
            return {"ignored": True, "reason": f"no handler for {job.name}"}
        run = EffectRun(str(job.id), token)
        self.completion.begin(run)
        try:
            ctx = self._context(job, data, _validate(data), bound, run)
            return await handler(ctx)  # the completion carries the run's effects
        except Deferred as exc:
            await self.completion.end(run)
            await self._defer(job, token, exc, bound)
            raise DelayedError(str(exc)) from exc
        except PermanentError as exc:
            await self.completion.end(run)
            bound.warning("job_failed_permanently", reason=str(exc))
            raise UnrecoverableError(str(exc)) from exc
        except Exception as exc:
            await self.completion.end(run)
            self._plan_retry(job, exc, bound)
            raise

    def _context(self, job: Job, data: dict[str, Any], envelope: Envelope,
                 bound: FilteringBoundLogger, run: EffectRun) -> JobContext:
        team_id = team_of(envelope) or "-"
        slack = JobSlack(self.slack, str(job.id), team_id, bound, self.limiter, self.effects,
                         run, self.tokens, envelope)
        return JobContext(
            name=job.name, job_id=str(job.id), attempt=job.attemptsMade + 1,
            data=data, slack=slack, log=bound, envelope=envelope, workspaces=self.tokens,
        )

    async def _defer(
        self, job: Job, token: str, exc: Deferred, bound: FilteringBoundLogger
    ) -> None:
        # A channel slot is reserved for exactly this job: come back right on time.
        exact = isinstance(exc, PacingLimited) and exc.scope == "channel"
        delay_ms = defer_delay_ms(exc.delay_seconds, self.rand(), 0.0 if exact else 0.2)
        await job.moveToDelayed(int(time.time() * 1000) + delay_ms, token)
        bound.info("job_deferred", reason=exc.reason, delay_ms=delay_ms)
        record_deferred(job.name, exc.reason)

    def _plan_retry(self, job: Job, exc: Exception, bound: FilteringBoundLogger) -> None:
        """Give the port this failure's delay as a `fixed` backoff: Node's formula with jitter.

        The policy is the one the job carries (a Node producer may have set its own), never
        this deployment's `JOB_*` settings.
        """
        policy = RetryPolicy.of_job(job.opts)
        delay_ms = policy.retry_delay_ms(job.attemptsMade, self.rand)
        if delay_ms is None:
            bound.error("job_attempts_exhausted", error=str(exc), error_type=type(exc).__name__,
                      attempts=policy.attempts)
            return
        set_retry_delay(job, delay_ms)
        bound.warning("job_retry_scheduled", error=str(exc), error_type=type(exc).__name__,
                    delay_ms=delay_ms, attempts=policy.attempts)


def _validate(data: dict[str, Any]) -> Envelope:
    try:
        return parse_envelope(data)
    except (ValidationError, TypeError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else {"msg": str(exc)}
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise InvalidPayload(f"{where or 'data'}: {first['msg']}") from None


def build_worker(settings: Settings, dispatcher: Dispatcher, options: WorkerOptions) -> Worker:
    """A BullMQ Worker (not running yet) with slackq's timings and command retry."""
    worker_class = FetchNextWorker if settings.worker_fetch_next else Worker
    name = worker_name()
    # BullMQ's per-minute completed/failed counts, kept by its moveToFinished script.
    metrics = {"metrics": {"maxDataPoints": settings.worker_metrics_points}} \
        if settings.worker_metrics_points else {}
    worker = worker_class(
        settings.queue_name,
        dispatcher,
        {
            "connection": worker_connection(settings, name),
            "name": name,
            **metrics,
            "prefix": settings.queue_prefix,
            "concurrency": settings.worker_concurrency,
            "autorun": False,
            "lockDuration": options.lock_duration_ms,
            "stalledInterval": options.stalled_interval_ms,
            "maxStalledCount": options.max_stalled_count,
            "runRetryDelay": options.run_retry_delay_ms,
        },
    )
    set_worker_retry(worker, command_retry(options.lock_duration_ms).build())
    _log_worker_events(worker, dispatcher.outage)
    if isinstance(worker, FetchNextWorker):
        worker.before_fetch = dispatcher.outage.wait_out
        if settings.worker_fetch_turn_file:
            worker.fetch_turn = FetchTurn(Path(settings.worker_fetch_turn_file))
    return worker


def _log_worker_events(worker: Worker, outage: RedisOutage) -> None:
    """Listen to every event: an `error` with no listener is dropped silently by the port.

    Redis failures (a fetch, a lock renewal, the stalled check refused or timed out) go to the
    process's `RedisOutage`: counted each, logged once per backoff step.
    """

    def on_error(error: Exception, job: Job | None = None) -> None:
        if is_transient(error):
            outage.failed(error, "bullmq")
            return
        log.error("worker_error", error=repr(error), job_id=getattr(job, "id", None))

    def on_failed(job: Job, error: Exception) -> None:
        log.warning("job_failed", job_id=job.id, job_name=job.name, error=str(error),
                    attempts_made=job.attemptsMade, final=job.finishedOn > 0)

    def on_completed(job: Job, _result: Any) -> None:
        log.info("job_completed", job_id=job.id, job_name=job.name)

    def on_stalled(job_id: str) -> None:
        log.warning("job_stalled_requeued", job_id=job_id)

    worker.on("error", on_error)
    worker.on("failed", on_failed)
    worker.on("completed", on_completed)
    worker.on("stalled", on_stalled)


def extend_leases_with_locks(worker: Worker, effects: EffectLog) -> None:
    """Whenever BullMQ renews job locks, extend the effect leases of those jobs' runs."""
    pending: set[asyncio.Task[Any]] = set()

    async def extend(job_ids: list[str]) -> None:
        with contextlib.suppress(RedisTransientError):  # the lease then ends with the lock
            await effects.extend(job_ids)

    def on_renewed(renewed: dict[str, Any]) -> None:
        task = asyncio.ensure_future(extend([str(job_id) for job_id in renewed["jobIds"]]))
        pending.add(task)
        task.add_done_callback(pending.discard)

    worker.on("locksRenewed", on_renewed)


def command_client(url: str, options: WorkerOptions, name: str | None = None) -> aioredis.Redis:
    """slackq's own Redis commands (limiter, effects): pooled, bounded, same retry as BullMQ's;
    named as the process's BullMQ connections (`name`: their client name)."""
    return redis_client(url, command_profile(options.lock_duration_ms), client_name=name)


@dataclass
class WorkerRuntime:
    """A running worker and what it owns; `stop()` shuts it all down."""

    worker: Worker
    run_task: asyncio.Task[Any]
    client: aioredis.Redis
    grace_seconds: float
    slack_session: aiohttp.ClientSession
    tokens: WorkspaceTokens | None = None
    waits: WaitRecorder | None = None

    async def stop(self) -> float:
        """Graceful shutdown; returns the seconds it took."""
        started = time.monotonic()
        await shutdown(self.worker, self.grace_seconds)
        await asyncio.gather(self.run_task, return_exceptions=True)
        await self.slack_session.close()
        if self.waits is not None:
            await self.waits.close()
        if self.tokens is not None:  # first: its change feed listens on the client's pool
            await self.tokens.close()
        await self.client.aclose()
        return time.monotonic() - started


async def start_worker(
    settings: Settings, registry: HandlerRegistry, options: WorkerOptions | None = None
) -> WorkerRuntime:
    """Check Redis, build the worker with its Slack client, limiter and effect log, run it."""
    options = options or WorkerOptions.from_settings(settings)
    client = command_client(settings.redis_url, options, client_name(settings, worker_name()))
    try:
        return await _start(settings, registry, options, client)
    except BaseException:
        await client.aclose()
        raise


async def _start(settings: Settings, registry: HandlerRegistry, options: WorkerOptions,
                 client: aioredis.Redis) -> WorkerRuntime:
    policy = await require_noeviction(client, allow_eviction=options.allow_eviction)
    if policy != "noeviction":
        log.warning("redis_eviction_allowed", maxmemory_policy=policy,
                    reason="SLACKQ_ALLOW_EVICTION=1; jobs may be evicted (development only)")
    tokens = None
    if settings.workspace_mode() == "multi":
        from worker.tokens import open_workspace_tokens  # the database, in this mode only

        tokens = await open_workspace_tokens(settings, client)
    slack_session = open_session()
    try:
        return await _start_worker(settings, registry, options, client, tokens, slack_session)
    except BaseException:
        await slack_session.close()
        if tokens is not None:
            await tokens.close()
        raise


async def _start_worker(settings: Settings, registry: HandlerRegistry, options: WorkerOptions,
                        client: aioredis.Redis, tokens: WorkspaceTokens | None,
                        slack_session: aiohttp.ClientSession) -> WorkerRuntime:
    outage = RedisOutage()
    effects = EffectLog(client, settings.queue_prefix, settings.queue_name,
                        lease_ms=options.lock_duration_ms, outage=outage)
    dispatcher = Dispatcher(
        registry,
        make_client(None if tokens else settings.bot_token(), settings.slack_api_url,
                    slack_session),
        limiter=Limiter(client, settings.queue_prefix, settings.queue_name, options.limits),
        effects=effects,
        tokens=tokens,
        outage=outage,
    )
    await effects.load_scripts()  # completions send the settle by SHA
    worker = build_worker(settings, dispatcher, options)
    complete_with(worker, dispatcher.completion)
    extend_leases_with_locks(worker, effects)
    renew_locks_until_jobs_end(worker)
    instrument_worker(worker, settings)  # Prometheus listeners; serves METRICS_PORT when set
    # Server capabilities before run(): without them short delays round up to ~1 s.
    try:
        await load_server_capabilities(worker, eviction_checked=True)
    except BaseException:
        with contextlib.suppress(Exception):
            await worker.close(force=True)
        raise
    waits = WaitRecorder(client, settings.queue_prefix, settings.queue_name)
    waits.attach(worker)  # the dashboard's wait-time history: no command on a job's path
    run_task = asyncio.create_task(worker.run(), name="bullmq-worker")
    log.info("worker_started", queue=settings.queue_name, handlers=registry.names(),
             workspaces="many" if tokens else "one",
             concurrency=settings.worker_concurrency, lock_duration_ms=options.lock_duration_ms,
             stalled_interval_ms=options.stalled_interval_ms,
             run_retry_delay_ms=options.run_retry_delay_ms)
    return WorkerRuntime(worker, run_task, client, options.grace_seconds, slack_session, tokens,
                         waits)


async def run_worker(
    settings: Settings,
    registry: HandlerRegistry,
    options: WorkerOptions | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set (by SIGTERM/SIGINT when not given), then shut down gracefully."""
    stop = stop or _stop_on_signals()
    runtime = await start_worker(settings, registry, options)
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait({runtime.run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    stop_task.cancel()
    seconds = await runtime.stop()
    log.info("worker_stopped", shutdown_seconds=round(seconds, 3))


async def shutdown(worker: Worker, grace_seconds: float) -> None:
    """Stop fetching; wait for in-flight jobs up to `grace_seconds`; then force-close."""
    log.info("worker_stopping", in_flight=len(in_flight_jobs(worker)),
             grace_seconds=grace_seconds)
    closing = asyncio.create_task(worker.close())
    done, _ = await asyncio.wait({closing}, timeout=grace_seconds)
    if not done:
        in_flight = in_flight_jobs(worker)
        log.warning("worker_force_closing", in_flight=len(in_flight),
                    job_ids=sorted(str(job.id) for job in in_flight))
        with contextlib.suppress(Exception):
            await worker.close(force=True)
        await asyncio.gather(closing, return_exceptions=True)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
