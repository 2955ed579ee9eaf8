"""Metrics and readiness against real Redis servers: worker listeners (failed vs retried),
reconnect counting, queue counts, readiness 200/503, bounded Slack outcome labels.
tests/test_ops_metrics_e2e.py scrapes the real processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bullmq import Queue, Worker
from prometheus_client import REGISTRY
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from producers.health import redis_readiness
from slackq.connection import PROBE, bullmq_connection, redis_client
from slackq.embedded import RedisProcess
from slackq.metrics import QueueCountsCollector
from tests.waiting import wait_until
from worker.metrics import attach_worker_listeners, slack_outcome


async def test_readiness_is_503_when_redis_is_gone(redis_server: RedisProcess) -> None:
    client = redis_client(redis_server.url, PROBE)
    try:
        status, body = await redis_readiness(client)
        assert (status, body["healthy"]) == (200, True)
        redis_server.kill()
        status, body = await redis_readiness(client)
        assert (status, body["healthy"]) == (503, False)
        assert body["error"] == "ConnectionError"
    finally:
        await client.aclose()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def queue(redis_server: RedisProcess) -> AsyncIterator[Queue]:
    q = Queue("slack-events", {"connection": bullmq_connection(redis_server.url)})
    yield q
    await q.close()


async def start_worker(url: str, process: Any) -> tuple[Worker, asyncio.Task[Any]]:
    worker = Worker("slack-events", process, {"connection": bullmq_connection(url),
                                              "autorun": False, "runRetryDelay": 200})
    attach_worker_listeners(worker)
    await worker.blockingRedisConnection.getRedisVersion()
    await worker.redisConnection.getRedisVersion()
    return worker, asyncio.create_task(worker.run())


async def stop_worker(worker: Worker, task: asyncio.Task[Any]) -> None:
    await worker.close()
    await asyncio.gather(task, return_exceptions=True)


async def test_failed_for_good_versus_retried(redis_server: RedisProcess, queue: Queue) -> None:
    async def fail(_job: Any, _token: str) -> None:
        raise RuntimeError("always")

    before_failed = counter("slackq_jobs_failed_total", job_name="msg_metrics")
    before_retried = counter("slackq_jobs_retried_total", job_name="msg_metrics")
    worker, task = await start_worker(redis_server.url, fail)
    try:
        await queue.add("msg_metrics", {}, {"jobId": "EvM1", "attempts": 2})

        async def failed() -> bool:
            return (await queue.getJobCounts("failed"))["failed"] == 1

        await wait_until(failed)
    finally:
        await stop_worker(worker, task)
    assert counter("slackq_jobs_retried_total", job_name="msg_metrics") - before_retried == 1
    assert counter("slackq_jobs_failed_total", job_name="msg_metrics") - before_failed == 1


async def test_redis_reconnects_are_counted(redis_server: RedisProcess, queue: Queue) -> None:
    async def ok(_job: Any, _token: str) -> str:
        return "ok"

    worker, task = await start_worker(redis_server.url, ok)
    before = counter("slackq_redis_reconnects_total")
    try:
        redis_server.kill()
        redis_server.start()
        await queue.add("after_restart", {}, {"jobId": "EvM2"})

        async def done() -> bool:
            return (await queue.getJobCounts("completed"))["completed"] == 1

        await wait_until(done, within=30)
    finally:
        await stop_worker(worker, task)
    assert counter("slackq_redis_reconnects_total") - before >= 1


async def test_queue_counts_match_bullmq(redis_server: RedisProcess, queue: Queue) -> None:
    await queue.add("a", {}, {"jobId": "EvW1"})
    await queue.add("a", {}, {"jobId": "EvW2"})
    await queue.add("a", {}, {"jobId": "EvD1", "delay": 60_000})
    await queue.add("a", {}, {"jobId": "EvP1", "priority": 3})
    collector = QueueCountsCollector(redis_server.url, "bull", "slack-events")
    counts = await asyncio.to_thread(collector.counts)
    collector.close()
    assert counts == await queue.getJobCounts(*counts)
    assert (counts["wait"], counts["delayed"], counts["prioritized"]) == (2, 1, 1)


def _api_error(status: int, body: dict[str, Any]) -> SlackApiError:
    response = AsyncSlackResponse(client=None, http_verb="POST", api_url="x", req_args={},
                                  data=body, headers={}, status_code=status)
    return SlackApiError("failed", response)


@pytest.mark.parametrize(("error", "outcome"), [
    (None, "ok"),
    (_api_error(200, {"ok": False, "error": "channel_not_found"}), "channel_not_found"),
    (_api_error(429, {"ok": False, "error": "ratelimited"}), "ratelimited"),
    (_api_error(503, {"ok": False}), "http_5xx"),
    (_api_error(200, {"ok": False, "error": "Weird Code!" * 10}), "other_error"),
    (TimeoutError(), "transport_error"),
])
def test_slack_outcome_labels_are_bounded(error: BaseException | None, outcome: str) -> None:
    assert slack_outcome(error) == outcome
