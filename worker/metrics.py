"""Prometheus metrics of the worker processes: jobs, Slack API calls, the metrics port.

Hooks, each a line or two where the event happens: `instrument_worker(worker, settings)` listens
to the BullMQ Worker's events and serves `METRICS_PORT`; `record_deferred(name, reason)` when a
job is delayed by a rate limit; `InstrumentedWebClient` counts Slack API outcomes by method and
error code. The shared primitives (Redis connection counters, queue counts, the exposition
registry) are in `slackq/metrics.py`.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from slackq.metrics import SLOW_BUCKETS, QueueCountsCollector, exposition_registry, labelled
from slackq.settings import Settings

log = structlog.get_logger(__name__)

JOBS_COMPLETED = Counter("slackq_jobs_completed", "Jobs completed", ["job_name"])
JOBS_FAILED = Counter("slackq_jobs_failed", "Jobs failed for good (no attempt left, or "
                      "unrecoverable)", ["job_name"])
JOBS_RETRIED = Counter("slackq_jobs_retried", "Failed attempts that BullMQ will retry",
                       ["job_name"])
JOBS_DEFERRED = Counter("slackq_jobs_delayed_by_rate_limit",
                        "Jobs put back on the delayed set because of a rate limit "
                        "(Slack 429 or slackq's own pacing)", ["job_name", "reason"])
JOB_SECONDS = Histogram("slackq_job_duration_seconds", "Processing time of one attempt",
                        ["job_name", "outcome"], buckets=SLOW_BUCKETS)
JOB_WAIT_SECONDS = Histogram("slackq_job_wait_seconds",
                             "Enqueue latency: from the job's creation to its first start",
                             ["job_name"], buckets=SLOW_BUCKETS)
SLACK_CALLS = Counter("slackq_slack_api_calls", "Slack Web API calls by method and outcome "
                      "(ok, Slack's error code, http_5xx, ratelimited, transport_error)",
                      ["method", "outcome"])

REDIS_ERRORS = Counter("slackq_worker_redis_errors", "Redis commands of a worker process that "
                       "failed (refused writes, lost connections, timeouts), by where they "
                       "were sent from and the error's kind", ["where", "kind"])

_ERROR_CODE = re.compile(r"^[a-z0-9_]{1,64}$")


def record_deferred(job_name: str, reason: str) -> None:
    """A job went back to the delayed set because of a rate limit."""
    JOBS_DEFERRED.labels(job_name, reason).inc()


def record_redis_error(where: str, kind: str) -> None:
    """A Redis command failed (worker/outage.py); `where` and `kind` are bounded labels."""
    REDIS_ERRORS.labels(where, kind).inc()


def record_slack_call(method: str, outcome: str) -> None:
    """A Web API call's outcome (`slack_outcome`'s labels)."""
    labelled(SLACK_CALLS, method, outcome).inc()


def error_label(code: Any) -> str:
    """Slack's error code as a label, or `other_error` for anything not shaped like one."""
    return code if isinstance(code, str) and _ERROR_CODE.match(code) else "other_error"


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
    return error_label(data.get("error") if isinstance(data, dict) else None)


class InstrumentedWebClient(AsyncWebClient):
    """slack-sdk's client, counting the outcome of every Web API call made through it (all its
    methods go through `api_call`); `worker.slack.call_slack` counts its own calls."""

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        try:
            response = await super().api_call(api_method, **kwargs)
        except BaseException as exc:
            SLACK_CALLS.labels(api_method, slack_outcome(exc)).inc()
            raise
        SLACK_CALLS.labels(api_method, "ok").inc()
        return response


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
            labelled(JOB_WAIT_SECONDS, job.name).observe(max(0.0, time.time() - created / 1000))

    def on_completed(job: Any, _result: Any) -> None:
        labelled(JOBS_COMPLETED, job.name).inc()
        _observe(job, "completed")

    def on_failed(job: Any, _error: BaseException) -> None:
        # The port sets finishedOn only when the job moved to `failed` for good.
        labelled(JOBS_FAILED if job.finishedOn else JOBS_RETRIED, job.name).inc()
        _observe(job, "failed")

    def _observe(job: Any, outcome: str) -> None:
        seconds = timer.stop(str(job.id))
        if seconds is not None:
            labelled(JOB_SECONDS, job.name, outcome).observe(seconds)

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
