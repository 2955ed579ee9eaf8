"""Prometheus metrics and readiness scraped from the real web and worker processes (the
Procfile's lines) during a run with a retried job."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness.slack_standin import FakeSlack, rate_limited, server_error
from slackq.embedded import RedisProcess, free_port
from tests.security_support import procfile_stack
from tests.slack_requests import app_mention_envelope, encode, signed_headers


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parsed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_until(url: str, ready: Callable[[dict[Any, float]], bool], within: float = 20) -> Any:
    deadline = time.monotonic() + within
    while True:
        parsed = samples(httpx.get(url, timeout=5).text)
        if ready(parsed) or time.monotonic() > deadline:
            return parsed
        time.sleep(0.1)


def test_web_and_worker_metrics_and_readiness(
    redis_server: RedisProcess, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    metrics_port = free_port()
    # One reply fails (HTTP 500: the job is retried), one is rate-limited (429: the job is
    # delayed by Retry-After without spending an attempt); both jobs then complete.
    fake_slack.script("chat.postMessage", server_error(500), rate_limited(1))
    # Two worker processes under the supervisor: it serves their sum on METRICS_PORT.
    with procfile_stack(redis_server.url, fake_slack, tmp_path, METRICS_PORT=str(metrics_port),
                        WORKER_PROCESSES="2") as (base, _web, worker_proc):
        ready = httpx.get(f"{base}/health/redis", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["healthy"] is True
        assert ready.json()["aof_enabled"] is True
        assert ready.json()["maxmemory_policy"] == "noeviction"
        for event_id, ts in (("Ev0MET0001", "1700000000.000100"),
                             ("Ev0MET0002", "1700000001.000100")):
            body = encode(app_mention_envelope(event_id, ts=ts))
            assert httpx.post(f"{base}/slack/events", content=body,
                              headers=signed_headers(body), timeout=5).status_code == 200
        worker_url = f"http://127.0.0.1:{metrics_port}/metrics"
        # Queue counts are cached for about a second: wait for them as well.
        worker = scrape_until(worker_url, lambda p: value(
            p, "slackq_jobs_completed_total", job_name="app_mention") >= 2 and value(
            p, "slackq_queue_jobs", queue="slack-events", state="completed") >= 2, within=30)
        web = scrape_until(f"{base}/metrics", lambda p: value(
            p, "slackq_queue_jobs", queue="slack-events", state="completed") >= 2)

    log = worker_proc.output()
    assert log.count("worker_started") == 2, log
    assert "worker_process_restarting" not in log and "Address already in use" not in log, log

    assert value(web, "slackq_jobs_enqueued_total", job_name="app_mention") == 2
    assert value(web, "slackq_enqueue_duration_seconds_count", job_name="app_mention") == 2
    assert value(web, "slackq_queue_jobs", queue="slack-events", state="completed") == 2
    assert value(web, "slackq_redis_connects_total") >= 1

    assert value(worker, "slackq_jobs_completed_total", job_name="app_mention") == 2
    assert value(worker, "slackq_jobs_retried_total", job_name="app_mention") == 1
    assert value(worker, "slackq_jobs_failed_total", job_name="app_mention") == 0
    assert value(worker, "slackq_slack_api_calls_total",
                 method="chat.postMessage", outcome="ok") == 2
    assert value(worker, "slackq_slack_api_calls_total",
                 method="chat.postMessage", outcome="http_5xx") == 1
    assert value(worker, "slackq_slack_api_calls_total",
                 method="chat.postMessage", outcome="ratelimited") == 1
    assert value(worker, "slackq_jobs_delayed_by_rate_limit_total", job_name="app_mention",
                 reason="Slack 429 on chat.postMessage") == 1
    assert value(worker, "slackq_job_duration_seconds_count",
                 job_name="app_mention", outcome="completed") == 2
    assert value(worker, "slackq_job_duration_seconds_count",
                 job_name="app_mention", outcome="failed") == 1
    assert value(worker, "slackq_job_wait_seconds_count", job_name="app_mention") == 2
    assert value(worker, "slackq_redis_connects_total") >= 2
    assert value(worker, "slackq_queue_jobs", queue="slack-events", state="completed") == 2
