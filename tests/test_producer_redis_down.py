"""Redis down, restarting, loading or slow: 503 well within Slack's 3 s, never 200 unstored.

Each test stops or slows a real redis-server while the webhook runs, then brings it back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from slackq.embedded import RedisProcess
from slackq.settings import Settings
from tests.slack_requests import SIGNING_SECRET, app_mention_envelope
from tests.waiting import wait_until
from tests.webhook_client import post_event, webhook

SLACK_TIMEOUT = 3.0


@pytest.fixture
async def client(redis_server: RedisProcess) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(redis_url=redis_server.url, slack_signing_secret=SIGNING_SECRET)
    async with webhook(settings) as client:
        yield client


def stored(redis_client: redis.Redis, event_id: str) -> bool:
    return bool(redis_client.exists(f"bull:slack-events:{event_id}"))


async def timed_post(client: httpx.AsyncClient, event_id: str) -> tuple[int, float]:
    started = time.monotonic()
    response = await post_event(client, app_mention_envelope(event_id))
    elapsed = time.monotonic() - started
    assert "Traceback" not in response.text
    return response.status_code, elapsed


def loading(port: int) -> bool:
    # No retry: redis-py's default would retry through LOADING (and a refused connection).
    with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1,
                     retry=Retry(NoBackoff(), 0)) as probe:
        try:
            probe.ping()
        except redis.BusyLoadingError:
            return True
        except redis.ConnectionError:
            return False
    return False


async def test_redis_down_is_503_in_budget_then_200_once_restarted(
    client: httpx.AsyncClient, redis_server: RedisProcess, redis_client: redis.Redis
) -> None:
    assert (await timed_post(client, "Ev0DOWN0001"))[0] == 200  # pooled connections now open
    redis_server.kill()

    status, elapsed = await timed_post(client, "Ev0DOWN0002")
    assert status == 503
    assert elapsed < SLACK_TIMEOUT

    redis_server.start()
    assert stored(redis_client, "Ev0DOWN0001"), "the acknowledged job was lost in the crash"
    assert not stored(redis_client, "Ev0DOWN0002"), "a 503 event was stored after all"
    # Slack's redelivery of the 503'd event is stored now.
    assert (await timed_post(client, "Ev0DOWN0002"))[0] == 200
    assert stored(redis_client, "Ev0DOWN0002")


async def test_redis_restarting_during_the_retries_is_200_and_stored(
    client: httpx.AsyncClient, redis_server: RedisProcess, redis_client: redis.Redis
) -> None:
    redis_server.kill()
    merge = structlog.contextvars.merge_contextvars
    with structlog.testing.capture_logs(processors=[merge]) as logs:
        request = asyncio.create_task(timed_post(client, "Ev0RESTART1"))
        await wait_until(lambda: any(e["event"] == "enqueue_retry" for e in logs))
        await asyncio.to_thread(redis_server.start)
        status, elapsed = await request
    assert status == 200
    assert elapsed < SLACK_TIMEOUT
    assert stored(redis_client, "Ev0RESTART1")
    retries = [e for e in logs if e["event"] == "enqueue_retry"]
    assert all(e.get("event_id") == e.get("job_id") == "Ev0RESTART1" for e in retries), retries
    assert [e["event"] for e in logs if e.get("job_id") == "Ev0RESTART1"][-1] == "job_stored"


async def restart_loading(
    server: RedisProcess, client: redis.Redis, keys: int
) -> asyncio.Task[None]:
    """Crash `server` holding `keys` keys and restart it slowly loading them (~1 ms per key)."""
    with client.pipeline(transaction=False) as pipe:
        for n in range(keys):
            pipe.set(f"filler:{n}", "x")
        pipe.execute()
    client.bgrewriteaof()  # the AOF's RDB preamble is what `key-load-delay` slows down

    def rewritten() -> bool:
        info = client.info("persistence")
        return not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])

    await wait_until(rewritten)
    server.kill()
    server.overrides["key-load-delay"] = "1000"  # microseconds per key while loading
    # Answer clients (with LOADING) every 1 KB loaded (~70 keys), not every 2 MB.
    server.overrides["loading-process-events-interval-bytes"] = "1024"
    task = asyncio.create_task(asyncio.to_thread(server.start))
    await wait_until(lambda: loading(server.port))
    return task


async def test_redis_loading_longer_than_the_budget_is_503(
    client: httpx.AsyncClient, redis_server: RedisProcess, redis_client: redis.Redis
) -> None:
    started = await restart_loading(redis_server, redis_client, keys=3000)

    status, elapsed = await timed_post(client, "Ev0LOAD0001")
    assert status == 503
    assert elapsed < SLACK_TIMEOUT
    assert loading(redis_server.port), "the server finished loading: this 503 proves nothing"

    await started
    assert not stored(redis_client, "Ev0LOAD0001")
    assert (await timed_post(client, "Ev0LOAD0001"))[0] == 200
    assert stored(redis_client, "Ev0LOAD0001")


async def test_redis_loading_within_the_budget_is_waited_for(
    client: httpx.AsyncClient, redis_server: RedisProcess, redis_client: redis.Redis
) -> None:
    started = await restart_loading(redis_server, redis_client, keys=800)

    with structlog.testing.capture_logs() as logs:
        status, elapsed = await timed_post(client, "Ev0LOAD0002")
    assert any(e.get("error") == "BusyLoadingError" for e in logs), "never saw LOADING"
    assert status == 200
    assert elapsed < SLACK_TIMEOUT
    await started
    assert stored(redis_client, "Ev0LOAD0002")


async def test_slow_redis_is_503_in_budget(
    client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    redis_client.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    try:
        status, elapsed = await timed_post(client, "Ev0SLOW0001")
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
    assert status == 503
    assert elapsed < SLACK_TIMEOUT
    assert (await timed_post(client, "Ev0SLOW0001"))[0] == 200
    assert redis_client.lrange("bull:slack-events:wait", 0, -1) == ["Ev0SLOW0001"]
