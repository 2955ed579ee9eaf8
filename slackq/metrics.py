"""Prometheus metrics of the web and worker processes (prometheus-client).

One process runs one web app or one worker, so the metrics live in prometheus-client's default
registry, as that library intends; tests compare values before and after. Queue counts are read
from Redis at scrape time by `QueueCountsCollector` (no background loop, never stale).

Hooks, each a line or two where the event happens:

* web: `observe_enqueue(name, seconds)` after a job is stored; `/metrics` and `/health/redis`
  come from `producers/health.py`.
* worker: `instrument_worker(worker, settings)` listens to the BullMQ Worker's events and serves
  `METRICS_PORT`; `record_deferred(name, reason)` when a job is delayed by a rate limit;
  `InstrumentedWebClient` counts Slack API outcomes by method and error code.
* both: `bullmq_connection()` / `producer_client()` pass `track_connect`, which counts
  Redis (re)connections.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import tempfile
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import redis
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

if TYPE_CHECKING:
    from slackq.settings import Settings

log = structlog.get_logger(__name__)

# Latency buckets (seconds): the webhook's budget is ~2 s of Slack's 3; jobs run up to minutes.
_FAST = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0)
_SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

JOBS_ENQUEUED = Counter("slackq_jobs_enqueued", "Jobs stored on the queue by the webhook",
                        ["job_name"])
ENQUEUE_SECONDS = Histogram("slackq_enqueue_duration_seconds",
                            "Time the webhook took to store a job in Redis", ["job_name"],
                            buckets=_FAST)
JOBS_COMPLETED = Counter("slackq_jobs_completed", "Jobs completed", ["job_name"])
JOBS_FAILED = Counter("slackq_jobs_failed", "Jobs failed for good (no attempt left, or "
                      "unrecoverable)", ["job_name"])
JOBS_RETRIED = Counter("slackq_jobs_retried", "Failed attempts that BullMQ will retry",
                       ["job_name"])
JOBS_DEFERRED = Counter("slackq_jobs_delayed_by_rate_limit",
                        "Jobs put back on the delayed set because of a rate limit "
                        "(Slack 429 or slackq's own pacing)", ["job_name", "reason"])
JOB_SECONDS = Histogram("slackq_job_duration_seconds", "Processing time of one attempt",
                        ["job_name", "outcome"], buckets=_SLOW)
JOB_WAIT_SECONDS = Histogram("slackq_job_wait_seconds",
                             "Enqueue latency: from the job's creation to its first start",
                             ["job_name"], buckets=_SLOW)
SLACK_CALLS = Counter("slackq_slack_api_calls", "Slack Web API calls by method and outcome "
                      "(ok, Slack's error code, http_5xx, ratelimited, transport_error)",
                      ["method", "outcome"])
REDIS_CONNECTS = Counter("slackq_redis_connects", "Redis connections established")
REDIS_RECONNECTS = Counter("slackq_redis_reconnects",
                           "Redis connections re-established after being lost")

_ERROR_CODE = re.compile(r"^[a-z0-9_]{1,64}$")
_connected_before: weakref.WeakSet[Any] = weakref.WeakSet()


async def track_connect(connection: Any) -> None:
    """redis-py `redis_connect_func`: the usual handshake, then count (re)connections.

    A connection object that connects a second time lost its socket: that is a reconnect.
    """
    await connection.on_connect()
    REDIS_CONNECTS.inc()
    if connection in _connected_before:
        REDIS_RECONNECTS.inc()
    else:
        _connected_before.add(connection)


def observe_enqueue(job_name: str, seconds: float) -> None:
    """The webhook stored a job of `job_name` in `seconds`."""
    _child(JOBS_ENQUEUED, job_name).inc()
    _child(ENQUEUE_SECONDS, job_name).observe(seconds)


def record_deferred(job_name: str, reason: str) -> None:
    """A job went back to the delayed set because of a rate limit."""
    JOBS_DEFERRED.labels(job_name, reason).inc()


def slack_outcome(exc: BaseException | None) -> str:
    """`ok`, Slack's error code (`channel_not_found`), `ratelimited`, `http_5xx` or
    `transport_error`: a bounded label set, whatever the answer."""
    if exc is None:
        return "ok"
    if not isinstance(exc, SlackApiError):
        return "transport_error"
    status = getattr(exc.response, "status_code", None)
    if status == 429:
        return "ratelimited"
    if isinstance(status, int) and status >= 500:
        return "http_5xx"
    data = getattr(exc.response, "data", None)
    code = data.get("error") if isinstance(data, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.match(code) else "other_error"


class InstrumentedWebClient(AsyncWebClient):
    """slack-sdk's client, counting every Web API call's outcome (all methods go through
    `api_call`)."""

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        try:
            response = await super().api_call(api_method, **kwargs)
        except BaseException as exc:
            SLACK_CALLS.labels(api_method, slack_outcome(exc)).inc()
            raise
        SLACK_CALLS.labels(api_method, "ok").inc()
        return response


# BullMQ's getCounts script: lists for wait/paused/active, sorted sets for the rest.
_LIST_STATES = ("wait", "paused", "active")
_ZSET_STATES = ("delayed", "prioritized", "waiting-children", "completed", "failed")


class QueueCountsCollector(Collector):
    """`slackq_queue_jobs{queue, state}`, read from Redis at each scrape (LLEN / ZCARD, what
    BullMQ's `getCounts` reads). A scrape while Redis is down yields no queue samples."""

    def __init__(self, url: str, prefix: str, queue: str) -> None:
        self.url, self.prefix, self.queue = url, prefix, queue

    def counts(self) -> dict[str, int]:
        from slackq.connection import redis_kwargs  # connection.py imports this module

        base = f"{self.prefix}:{self.queue}:"
        with redis.Redis(**redis_kwargs(self.url), socket_timeout=1, socket_connect_timeout=1,
                         retry=Retry(NoBackoff(), 0)) as client:
            pipe = client.pipeline(transaction=False)
            for state in _LIST_STATES:
                pipe.llen(base + state)
            for state in _ZSET_STATES:
                pipe.zcard(base + state)
            values = pipe.execute()
        return dict(zip(_LIST_STATES + _ZSET_STATES, map(int, values), strict=True))

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("slackq_queue_jobs", "Jobs on the queue by state",
                                   labels=["queue", "state"])
        try:
            counts = self.counts()
        except (RedisError, OSError) as exc:
            log.warning("metrics_queue_counts_unavailable", error=type(exc).__name__)
            counts = {}
        for state, count in counts.items():
            family.add_metric([self.queue, state], count)
        yield family


class _Forward(Collector):
    """Expose another registry's metrics through this one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return iter(self.source.collect())


def exposition_registry(url: str, prefix: str, queue: str,
                        *extra: CollectorRegistry) -> CollectorRegistry:
    """What `/metrics` serves: the process's metrics, `extra` registries and the queue counts."""
    registry = CollectorRegistry(auto_describe=False)
    for source in (REGISTRY, *extra):
        registry.register(_Forward(source))
    registry.register(QueueCountsCollector(url, prefix, queue))
    return registry


@functools.lru_cache(maxsize=1024)
def _child(metric: Any, *label_values: str) -> Any:
    """`metric.labels(*label_values)`, looked up once: `labels()` takes a lock and validates
    on every call, which the worker would otherwise pay several times per job."""
    return metric.labels(*label_values)


class _JobTimer:
    """Start times of active jobs, bounded: a job that leaves without an event is forgotten."""

    def __init__(self, limit: int = 10_000) -> None:
        self.started: OrderedDict[str, float] = OrderedDict()
        self.limit = limit

    def start(self, job_id: str) -> None:
        self.started[job_id] = time.monotonic()
        self.started.move_to_end(job_id)
        while len(self.started) > self.limit:
            self.started.popitem(last=False)

    def stop(self, job_id: str) -> float | None:
        started = self.started.pop(job_id, None)
        return None if started is None else time.monotonic() - started


def attach_worker_listeners(worker: Any) -> None:
    """Count BullMQ Worker events: active (wait time), completed, failed / retried (duration)."""
    timer = _JobTimer()

    def on_active(job: Any, _previous: Any = None) -> None:
        timer.start(str(job.id))
        if int(getattr(job, "attemptsStarted", 0) or 0) <= 1 and job.timestamp:
            created = job.timestamp + int(job.opts.get("delay") or 0)
            _child(JOB_WAIT_SECONDS, job.name).observe(max(0.0, time.time() - created / 1000))

    def on_completed(job: Any, _result: Any) -> None:
        _child(JOBS_COMPLETED, job.name).inc()
        _observe(job, "completed")

    def on_failed(job: Any, _error: BaseException) -> None:
        # The port sets finishedOn only when the job moved to `failed` for good.
        _child(JOBS_FAILED if job.finishedOn else JOBS_RETRIED, job.name).inc()
        _observe(job, "failed")

    def _observe(job: Any, outcome: str) -> None:
        seconds = timer.stop(str(job.id))
        if seconds is not None:
            _child(JOB_SECONDS, job.name, outcome).observe(seconds)

    worker.on("active", on_active)
    worker.on("completed", on_completed)
    worker.on("failed", on_failed)


# Set by `serve_supervisor_metrics` for the worker processes of a supervisor.
SUPERVISED_ENV = "SLACKQ_METRICS_SUPERVISED"


def serve_supervisor_metrics(settings: Settings) -> None:
    """Call before a supervisor starts its worker processes (WORKER_PROCESSES > 1).

    The children cannot all bind METRICS_PORT: they write their metrics to a shared directory
    (prometheus-client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`, inherited through the
    environment) and this process serves their sum, plus the queue counts, on METRICS_PORT.
    """
    if not settings.metrics_port:
        return
    directory = tempfile.mkdtemp(prefix="slackq-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    os.environ[SUPERVISED_ENV] = "1"
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(QueueCountsCollector(settings.redis_url, settings.queue_prefix,
                                           settings.queue_name))
    start_http_server(settings.metrics_port, addr="0.0.0.0", registry=registry)
    log.info("metrics_serving", port=settings.metrics_port, processes="all children")


def instrument_worker(worker: Any, settings: Settings) -> None:
    """Attach the listeners; serve `/metrics` on `METRICS_PORT` (all interfaces) when set,
    unless a supervisor serves them for all its worker processes."""
    attach_worker_listeners(worker)
    if settings.metrics_port and not os.environ.get(SUPERVISED_ENV):
        registry = exposition_registry(settings.redis_url, settings.queue_prefix,
                                       settings.queue_name)
        start_http_server(settings.metrics_port, addr="0.0.0.0", registry=registry)
        log.info("metrics_serving", port=settings.metrics_port)
