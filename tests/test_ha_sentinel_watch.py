"""The primary watch behind Sentinel (slackq/sentinel_pool.py), with real processes: a primary,
a replica and three sentinels (harness.topology). A process's Sentinel clients on one event loop
share one watch: one round of `SENTINEL GET-MASTER-ADDR-BY-NAME` per interval however many
clients it has, and all of them leave an old primary in the same tick (a worker whose BullMQ
connection moved before its command client claimed a job on the old primary: "no job hash",
tests/test_worker_split_primary.py)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from harness.topology import MASTER_NAME, SentinelTopology, ask
from slackq.connection import PROBE, PRODUCER, redis_client
from tests.waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.slow  # a Sentinel topology and a failover (~10 s); still run in CI

@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    topo = SentinelTopology(tmp_path_factory.mktemp("watch") / "topology", replicas=1).start()
    yield topo
    topo.stop()


async def _commands(sentinel: aioredis.Redis) -> int:
    """The commands `sentinel` has answered so far (`total_commands_processed`: a sentinel
    keeps no INFO commandstats), the INFO asking it included from the next call on."""
    return int((await sentinel.info("stats"))["total_commands_processed"])


async def test_two_clients_on_one_loop_ask_the_sentinels_once_per_interval(
    tmp_path: Path,
) -> None:
    """A redis-py pool (PROBE) and a lean pool (PRODUCER), as a worker has both, on a lone
    sentinel: no other sentinel talks to it, so between two INFOs it answers the watch's
    `SENTINEL GET-MASTER-ADDR-BY-NAME` and the first INFO only. The bound is from the watch's
    sleep, never early: one watch makes at most window/interval + 1 rounds in a window (+1 for
    a query sent just before it), so a busy machine can only lower the count; a watch per
    client made about twice as many."""
    interval = 0.1
    topo = SentinelTopology(tmp_path / "lone", replicas=0, sentinels=1).start()
    url = f"{topo.url}?sentinel_check_seconds={interval}"
    clients = [redis_client(url, PROBE), redis_client(url, PRODUCER)]
    [watcher] = topo.watchers
    sentinel = aioredis.Redis(host=watcher.host, port=watcher.port)
    try:
        # The topology waits for nothing with no replica and no other sentinel.
        wait_until_sync(lambda: bool(watcher.master()), 10, "the sentinel to answer")
        for client in clients:
            assert await client.ping()
        loop = asyncio.get_running_loop()
        started = loop.time()
        before = await _commands(sentinel)
        await asyncio.sleep(20 * interval)  # the window: no client connects during it
        queries = await _commands(sentinel) - before - 1
        most = math.floor((loop.time() - started) / interval) + 2
        assert 1 <= queries <= most, (queries, most)
    finally:
        for client in [*clients, sentinel]:
            await client.aclose()
        topo.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "redis-primary-watch"]


async def test_after_a_failover_every_client_leaves_the_old_primary_in_the_same_tick(
    topology: SentinelTopology,
) -> None:
    """The second client connects half an interval after the first: with a watch each, their
    ticks were that far apart, and the test saw one client off the old primary and the other
    still on it. The clients are idle: only the watch moves them."""
    interval = 0.4
    url = f"{topology.url}?sentinel_check_seconds={interval}"
    first, second = redis_client(url, PROBE), redis_client(url, PRODUCER)
    port = topology.primary_port()
    assert port is not None
    old = topology.node(port)
    try:
        assert await first.ping()
        await asyncio.sleep(interval / 2)
        assert await second.ping()
        assert _on(first, old.port) and _on(second, old.port)
        assert await asyncio.to_thread(ask, topology.watchers[0].host, topology.watchers[0].port,
                                       lambda client: client.sentinel_failover(MASTER_NAME))

        def left() -> bool:
            on_old = (_on(first, old.port), _on(second, old.port))
            assert on_old[0] == on_old[1], f"one client left the old primary first: {on_old}"
            return not any(on_old)

        await wait_until(left, 30, "the clients to leave the old primary")
        new = await asyncio.to_thread(topology.wait_failover, old.port)

        async def on_new() -> bool:  # reconnected through the sentinels
            assert await first.ping() and await second.ping()
            return _on(first, new) and _on(second, new)

        await wait_until(on_new, 20, "the clients on the new primary")
    finally:
        await first.aclose()
        await second.aclose()


def _on(client: aioredis.Redis, port: int) -> bool:
    """Whether a connection of `client`'s pool is open to the node on `port` (all local)."""
    pool = client.connection_pool
    connections = [*pool._available_connections, *pool._in_use_connections]  # type: ignore[attr-defined]
    return any(c.is_connected and c.port == port for c in connections)
