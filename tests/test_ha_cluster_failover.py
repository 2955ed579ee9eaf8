"""A cluster failover, in process (the end-to-end campaign is `python -m harness failover
--topology cluster`): three primaries with a replica each; the primary serving the `{bull}` slot
is SIGKILLed while the worker's client blocks in BZPOPMIN on it, and its replica takes over."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from bullmq import Queue
from redis.exceptions import RedisError

from harness.cluster import ClusterTopology
from slackq.connection import BLOCKING, PRODUCER, command_retry, redis_client
from tests.cluster_support import cluster_unavailable_reason
from tests.prerequisites import requires

pytestmark = requires("a local Redis Cluster", cluster_unavailable_reason())
PREFIX = "{bull}"
MARKER = f"{PREFIX}:slack-events:marker"


async def wait_for_marker(client: aioredis.Redis) -> Any:
    """BZPOPMIN until it answers, as the worker's fetch loop does: an error (the client's
    retries spent while no primary serves the slot yet) is followed by another try, on the same
    client, which must then find the slot's new primary by itself."""
    while True:
        try:
            return await client.bzpopmin(MARKER, 5)
        except RedisError:
            await asyncio.sleep(0.1)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[ClusterTopology]:
    topo = ClusterTopology(tmp_path / "cluster", replicas=1).start()
    yield topo
    topo.stop()


async def test_the_blocking_wait_and_the_producer_follow_the_slot_to_the_new_primary(
    topology: ClusterTopology,
) -> None:
    waiter = redis_client(topology.url, BLOCKING)
    waiter.set_retry(command_retry(20_000).build())  # as the worker sets it
    producer = redis_client(topology.url, PRODUCER)
    queue = Queue("slack-events", {"connection": producer, "prefix": PREFIX})
    try:
        assert (await queue.add("app_mention", {}, {"jobId": "before"})).id == "before"
        waiting = asyncio.create_task(wait_for_marker(waiter))
        await asyncio.sleep(0)  # let it send the BZPOPMIN (its reply is what matters)
        old = topology.kill_owner(PREFIX)
        new_port = await asyncio.to_thread(topology.wait_failover, PREFIX, old.port)
        assert new_port != old.port
        stored = None
        deadline = time.monotonic() + 30
        while not waiting.done() or stored is None:  # a producer's add leaves the marker
            assert time.monotonic() < deadline, "no add or no marker on the new primary in 30 s"
            with contextlib.suppress(RedisError):
                stored = stored or (await queue.add("app_mention", {}, {"jobId": "after"})).id
            await asyncio.wait({waiting}, timeout=0.2)
        assert stored == "after"
        assert waiting.result() is not None and waiting.result()[0] == MARKER
        # The job added before the kill was replicated: the new primary has it.
        assert await producer.exists(f"{PREFIX}:slack-events:before") == 1
    finally:
        await queue.close()
        await waiter.aclose()
        await producer.aclose()
