"""One retry policy: the settings write it into job options, the dispatcher reads it back.

Pure: no Redis. The dispatcher's part runs `Dispatcher._plan_retry` on a job-shaped object.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
import structlog
from bullmq import Job
from structlog.testing import capture_logs

from slackq.contract import JobOptions, job_options
from slackq.errors import ConfigError
from slackq.retry_policy import Backoff, RetryPolicy, backoff_delay_ms
from slackq.settings import Settings, load_settings
from worker.registry import HandlerRegistry
from worker.runner import Dispatcher

DEFAULTS = Settings.model_construct()


def test_default_job_options_are_the_documented_contract() -> None:
    assert job_options("Ev0OPTS0001", DEFAULTS) == {
        "jobId": "Ev0OPTS0001",
        "attempts": 5,
        "backoff": {"type": "exponential", "delay": 1000, "jitter": 0.5},
        "removeOnComplete": {"age": 3600, "count": 1000},
        "removeOnFail": {"age": 86400, "count": 10_000},
        "stackTraceLimit": 1,
        "deduplication": {"id": "Ev0OPTS0001", "ttl": 3_600_000},
    }
    assert RetryPolicy.from_settings(DEFAULTS).longest_delays_ms() == [1000, 2000, 4000, 8000]


def test_job_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"JOB_ATTEMPTS": "3", "JOB_BACKOFF_DELAY_MS": "250",
                        "JOB_BACKOFF_JITTER": "0", "JOB_KEEP_COMPLETED_SECONDS": "60",
                        "JOB_KEEP_COMPLETED_COUNT": "10", "JOB_KEEP_FAILED_SECONDS": "600",
                        "JOB_KEEP_FAILED_COUNT": "50",
                        "JOB_DEDUPLICATION_TTL_MS": "90000"}.items():
        monkeypatch.setenv(name, value)
    options = JobOptions.from_settings(load_settings()).for_job("Ev0OPTS0002")
    assert options == {
        "jobId": "Ev0OPTS0002",
        "attempts": 3,
        "backoff": {"type": "exponential", "delay": 250},  # no jitter key when 0, as before
        "removeOnComplete": {"age": 60, "count": 10},
        "removeOnFail": {"age": 600, "count": 50},
        "stackTraceLimit": 1,
        "deduplication": {"id": "Ev0OPTS0002", "ttl": 90_000},
    }


@pytest.mark.parametrize(("name", "value"), [("JOB_ATTEMPTS", "0"), ("JOB_BACKOFF_JITTER", "1.5"),
                                             ("JOB_BACKOFF_DELAY_MS", "-1")])
def test_a_malformed_job_option_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_the_policy_a_job_carries_is_the_one_the_settings_wrote() -> None:
    policy = RetryPolicy.from_settings(DEFAULTS)
    assert RetryPolicy.of_job(job_options("Ev0OPTS0003", DEFAULTS)) == policy
    assert policy == RetryPolicy(5, Backoff("exponential", 1000, 0.5))


def never_called() -> float:
    raise AssertionError("rand() called for a failure that is not retried")


def test_retry_delays_follow_the_jobs_own_options() -> None:
    node_job = RetryPolicy.of_job({"attempts": 3, "backoff": {"type": "fixed", "delay": 700}})
    assert [node_job.retry_delay_ms(made, lambda: 0.3) for made in (0, 1)] == [700, 700]
    assert node_job.retry_delay_ms(2, never_called) is None  # the third run was the last

    ours = RetryPolicy.from_settings(DEFAULTS)
    assert ours.retry_delay_ms(2, lambda: 0.0) == backoff_delay_ms(
        Backoff("exponential", 1000, 0.5), 3, 0.0) == 2000
    assert ours.retry_delay_ms(4, never_called) is None

    # BullMQ's defaults: one attempt. No backoff, or a Node custom strategy: nothing to compute.
    assert RetryPolicy.of_job({}) == RetryPolicy(1, None)
    assert RetryPolicy.of_job({"attempts": 4}).retry_delay_ms(0, never_called) is None
    custom = {"attempts": 4, "backoff": {"type": "node-only", "delay": 5}}
    assert RetryPolicy.of_job(custom).retry_delay_ms(0, never_called) is None
    assert RetryPolicy(2, None).to_opts() == {"attempts": 2}


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    structlog.contextvars.clear_contextvars()
    yield Dispatcher(HandlerRegistry(), slack=cast(Any, None), rand=lambda: 0.5)


def failing_job(opts: dict[str, Any], attempts_made: int) -> Job:
    return cast(Job, SimpleNamespace(opts=dict(opts), attemptsMade=attempts_made))


def test_the_dispatcher_retries_by_the_jobs_options_not_the_settings(
    dispatcher: Dispatcher,
) -> None:
    # A Node producer's job: 2 attempts, fixed 300 ms; this deployment's settings say otherwise.
    job = failing_job({"attempts": 2, "backoff": {"type": "fixed", "delay": 300}}, 0)
    with capture_logs() as logs:
        dispatcher._plan_retry(job, RuntimeError("boom"), structlog.get_logger())
    assert job.opts["backoff"] == {"type": "fixed", "delay": 300}
    assert logs[0]["event"] == "job_retry_scheduled" and logs[0]["attempts"] == 2

    ours = failing_job(job_options("Ev0OPTS0004", DEFAULTS), 1)
    with capture_logs() as logs:
        dispatcher._plan_retry(ours, RuntimeError("boom"), structlog.get_logger())
    # Node's formula for the second retry with rand 0.5: floor(0.5 * 2000 * 0.5 + 1000).
    assert ours.opts["backoff"] == {"type": "fixed", "delay": 1500}
    assert logs[0]["delay_ms"] == 1500

    last = failing_job({"attempts": 2, "backoff": {"type": "fixed", "delay": 300}}, 1)
    with capture_logs() as logs:
        dispatcher._plan_retry(last, RuntimeError("boom"), structlog.get_logger())
    assert last.opts["backoff"] == {"type": "fixed", "delay": 300}  # untouched
    assert logs[0]["event"] == "job_attempts_exhausted" and logs[0]["attempts"] == 2
