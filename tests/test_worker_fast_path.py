"""worker/pool.py: fetch-next and the pooled connection keep the port's semantics (real Redis)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from bullmq import Job, Queue, Worker

from slackq.connection import bullmq_connection
from slackq.embedded import RedisProcess
from slackq.settings import Settings
from worker.pool import FetchNextWorker, pooled_connection, worker_connection

JOBS = 200


async def fill(url: str, queue_name: str, count: int) -> None:
    queue = Queue(queue_name, {"connection": url})
    try:
        await queue.addBulk([{"name": "n", "data": {"i": i}, "opts": {"jobId": f"Ev{i}x"}}
                             for i in range(count)])
    finally:
        await queue.close()


async def drain(worker: Worker, client: aioredis.Redis, queue_name: str,
                done: set[str], count: int) -> None:
    await worker.blockingRedisConnection.getRedisVersion()
    await worker.redisConnection.getRedisVersion()
    running = asyncio.create_task(worker.run())
    deadline = time.monotonic() + 30
    try:
        while len(done) < count or await client.llen(f"bull:{queue_name}:active"):
            assert time.monotonic() < deadline, f"{len(done)} of {count} done"
            await asyncio.sleep(0.02)
    finally:
        await worker.close()
        await asyncio.gather(running, return_exceptions=True)


def counting_move_to_active(worker: Worker) -> list[int]:
    calls: list[int] = []
    original = worker.backend.moveToActive

    async def counted(token: str, opts: dict[str, Any]) -> Any:
        calls.append(1)
        return await original(token, opts)

    worker.backend.moveToActive = counted
    return calls


@pytest.mark.parametrize("worker_class", [Worker, FetchNextWorker])
async def test_every_job_completes_once_and_fetch_next_saves_the_moves_to_active(
    redis_server: RedisProcess, worker_class: type[Worker]
) -> None:
    await fill(redis_server.url, "fast", JOBS)
    seen: list[str] = []

    async def processor(job: Job, _token: str) -> str:
        seen.append(str(job.id))
        return "ok"

    worker = worker_class("fast", processor, {"connection": bullmq_connection(redis_server.url),
                                              "concurrency": 4, "autorun": False})
    moves = counting_move_to_active(worker)
    completed: set[str] = set()
    worker.on("completed", lambda job, _result: completed.add(str(job.id)))
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await drain(worker, client, "fast", completed, JOBS)
        assert sorted(seen) == sorted(f"Ev{i}x" for i in range(JOBS))
        assert await client.zcard("bull:fast:completed") == JOBS
        assert await client.llen("bull:fast:wait") == 0
    finally:
        await client.aclose()
    if worker_class is FetchNextWorker:
        # Each completion fetched the next job: moveToActive only (re)starts the slots.
        assert len(moves) < JOBS / 4
    else:
        assert len(moves) >= JOBS


async def test_a_pooled_worker_overlaps_commands_and_completes_everything(
    redis_server: RedisProcess,
) -> None:
    await fill(redis_server.url, "pooled", JOBS)
    connection = pooled_connection(redis_server.url, 5)
    in_flight, peak = 0, 0

    async def processor(_job: Job, _token: str) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1

    worker = FetchNextWorker("pooled", processor, {"connection": connection, "concurrency": 8,
                                                   "autorun": False})
    completed: set[str] = set()
    worker.on("completed", lambda job, _result: completed.add(str(job.id)))
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await drain(worker, client, "pooled", completed, JOBS)
        assert len(completed) == JOBS
        assert await client.zcard("bull:pooled:completed") == JOBS
        assert peak > 1
        # More than one command connection was opened, never more than the pool's size.
        created = len(connection.connection_pool._in_use_connections) + len(
            connection.connection_pool._available_connections)
        assert 1 < created <= 5
    finally:
        await client.aclose()


def test_worker_connection_follows_the_setting() -> None:
    single = worker_connection(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert isinstance(single, dict) and single["socket_timeout"] is None
    pooled = worker_connection(Settings(redis_url="redis://127.0.0.1:1/0",
                                        worker_redis_connections=3))
    assert isinstance(pooled, aioredis.Redis)
    assert pooled.connection_pool.max_connections == 4
