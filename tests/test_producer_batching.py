"""AddBatcher: concurrent adds share pipelined round trips; each resolves once stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
from bullmq import Queue

from producers.batching import AddBatcher
from slackq.connection import PRODUCER, redis_client
from slackq.contract import JobOptions
from slackq.settings import Settings
from tests.slack_requests import app_mention_envelope

QUEUE = "bull:slack-events"
# The webhook's job options, with the settings' defaults.
JOBS = JobOptions.from_settings(Settings.model_construct())


@pytest.fixture
async def batcher(webhook_settings: Settings) -> AsyncIterator[AddBatcher]:
    client = redis_client(webhook_settings.redis_url, PRODUCER.with_timeout(1.0))
    queue = Queue("slack-events", {"connection": client})
    yield AddBatcher(queue)
    await queue.close()


async def test_concurrent_adds_are_all_stored_over_one_connection(
    batcher: AddBatcher, queue_redis: redis.Redis
) -> None:
    await batcher.add("app_mention", app_mention_envelope("Ev0WARM"), JOBS.for_job("Ev0WARM"))
    ids = [f"Ev0BATCH{n:03d}" for n in range(100)]
    clients_before = queue_redis.info("clients")["connected_clients"]
    stored = await asyncio.gather(*(
        batcher.add("app_mention", app_mention_envelope(i), JOBS.for_job(i)) for i in ids))
    assert stored == ids
    assert all(queue_redis.hget(f"{QUEUE}:{i}", "name") == "app_mention" for i in ids)
    # One pipeline at a time: no connection per request.
    assert queue_redis.info("clients")["connected_clients"] <= clients_before + 1


async def test_the_same_id_twice_in_one_batch_is_one_job(
    batcher: AddBatcher, queue_redis: redis.Redis
) -> None:
    envelope = app_mention_envelope("Ev0TWICE")
    first, second = await asyncio.gather(
        batcher.add("app_mention", envelope, JOBS.for_job("Ev0TWICE")),
        batcher.add("app_mention", envelope, JOBS.for_job("Ev0TWICE")))
    assert first == second == "Ev0TWICE"
    assert queue_redis.lrange(f"{QUEUE}:wait", 0, -1) == ["Ev0TWICE"]


@pytest.mark.parametrize("count", [1, 2])  # a lone EVALSHA, and a pipeline of them
async def test_a_flushed_script_cache_falls_back_to_the_ports_add(
    batcher: AddBatcher, queue_redis: redis.Redis, count: int
) -> None:
    await batcher.add("app_mention", app_mention_envelope("Ev0PRE"), JOBS.for_job("Ev0PRE"))
    queue_redis.script_flush()  # what a Redis restart does to EVALSHA
    ids = [f"Ev0NOSCRIPT{n}" for n in range(count)]
    stored = await asyncio.gather(*(
        batcher.add("app_mention", app_mention_envelope(i), JOBS.for_job(i)) for i in ids))
    assert stored == ids
    assert all(queue_redis.exists(f"{QUEUE}:{i}") for i in ids)
