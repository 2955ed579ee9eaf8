"""Behind Sentinel, with real processes: a primary, two replicas and three sentinels
(harness.topology), the Procfile's web and worker on a `redis+sentinel://` URL, and the Slack
stand-in. The failover test SIGKILLs the primary while signed events flow and checks that every
event answered 200 is replied to, with `ACK_DURABILITY=replicas:1`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.exceptions import RedisError

from harness.failover import FailoverConfig, run_failover
from harness.slack_standin import FakeSlack
from harness.topology import MASTER_NAME, QUORUM, SentinelTopology, ask
from slackq.connection import BLOCKING, PRODUCER, command_retry, redis_client
from tests.security_support import procfile_stack, run_cli
from tests.slack_requests import app_mention_envelope, encode, signed_headers

pytestmark = pytest.mark.slow  # Sentinel topologies and failovers; still run in CI (issue 16)

# Pacing would spread the replies over minutes; this test is about Redis, not Slack's limits.
NO_PACING = {"WORKER_RATE_PER_CHANNEL": "0", "WORKER_RATE_PER_TEAM": "0"}


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    topo = SentinelTopology(tmp_path / "topology").start()
    yield topo
    topo.stop()


def post(base: str, index: int, client: httpx.Client) -> int:
    envelope = app_mention_envelope(f"Ev0HA{index:06d}", ts=f"1700000000.{index:06d}")
    body = encode(envelope)
    try:
        return client.post(f"{base}/slack/events", content=body, headers=signed_headers(body),
                           timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_web_worker_and_status_on_a_sentinel_url(
    topology: SentinelTopology, fake_slack: FakeSlack, tmp_path: Path,
) -> None:
    with procfile_stack(topology.url, fake_slack, tmp_path, **NO_PACING) as (base, _web, _w):
        with httpx.Client() as client:
            assert post(base, 1, client) == 200
            assert client.get(f"{base}/health/redis", timeout=5).json()["healthy"] is True
        [call] = fake_slack.wait_for_calls("chat.postMessage", 1)
        assert call.args["thread_ts"] == "1700000000.000001"
    code, output = run_cli(topology.url, "status", "--json")
    assert code == 0, output
    assert json.loads(output)["counts"]["completed"] == 1
    code, output = run_cli(topology.url, "status")
    assert code == 0 and f"on redis+sentinel://127.0.0.1:{topology.watchers[0].port}" in output
    code, output = run_cli(topology.url, "doctor", "--json")
    checks = {check["name"]: check["level"] for check in json.loads(output)["checks"]}
    assert code == 1 and checks["eviction policy"] == "ok"  # the test nodes have no password
    assert checks["authentication"] == "FAIL"


@pytest.mark.parametrize("durability", ["replicas:1", "memory"])
def test_events_keep_flowing_through_a_failover(tmp_path: Path, durability: str) -> None:
    """`replicas:1` loses no acknowledged event; `memory` may (async replication), so for it
    the test measures without asserting zero loss. The campaign is `harness.failover`'s (the
    primary SIGKILLed after 20 acks, 40 acks after it, the same web and worker processes, 2
    worker processes): the numbers docs/high-availability.md quotes."""
    report = run_failover(FailoverConfig(fault="kill", ack=durability), tmp_path)
    print(json.dumps(report))
    assert report["acked"] >= 60
    if durability == "replicas:1":
        assert report["lost"] == 0 and report["records_lost"] == 0, report


async def test_a_blocking_wait_on_the_dead_primary_finds_the_new_one(
    topology: SentinelTopology,
) -> None:
    """The worker's BZPOPMIN (its client and command retry) outlives a SIGKILLed primary: its
    retries reconnect through the sentinels, not to the dead primary's address."""
    waiter = redis_client(topology.url, BLOCKING.pooled(2))
    waiter.set_retry(command_retry(20_000).build())
    producer = redis_client(topology.url, PRODUCER)
    try:
        assert await waiter.ping()
        waiting = asyncio.create_task(waiter.bzpopmin("marker", 5))
        await asyncio.sleep(0)  # let it send the BZPOPMIN (its reply is what matters)
        old = topology.kill_primary()
        await asyncio.to_thread(topology.wait_failover, old.port)
        while not waiting.done():  # the marker a producer's add would leave
            with contextlib.suppress(RedisError):
                await producer.zadd("marker", {"0": 0})
            await asyncio.wait({waiting}, timeout=0.2)
        assert waiting.result() is not None and waiting.result()[0] == "marker"
    finally:
        await waiter.aclose()
        await producer.aclose()


async def test_a_client_leaves_a_primary_the_sentinels_no_longer_name(tmp_path: Path) -> None:
    """The primary check alone (no error, no READONLY): the old primary stays up and a primary,
    as one cut off by a partition does for the clients that still reach it, while every sentinel
    names another node. A blocked BZPOPMIN on the old one is released and finds the new one;
    without the check it would wait out its 5 s."""
    topology = SentinelTopology(tmp_path / "topology", replicas=1).start()
    waiter = redis_client(f"{topology.url}?sentinel_check_seconds=0.2", BLOCKING.pooled(2))
    waiter.set_retry(command_retry(20_000).build())
    try:
        assert await waiter.ping()
        waiting = asyncio.create_task(waiter.bzpopmin("marker", 5))
        await asyncio.sleep(0)  # let it send the BZPOPMIN
        new = topology.nodes[1]
        ask(new.host, new.port, lambda client: client.replicaof("NO", "ONE"))
        for watcher in topology.watchers:  # as after a failover the old primary did not see
            ask(watcher.host, watcher.port, lambda client: (
                client.sentinel_remove(MASTER_NAME),
                client.sentinel_monitor(MASTER_NAME, new.host, new.port, QUORUM)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4  # below the BZPOPMIN's own 5 s
        while not waiting.done() and loop.time() < deadline:
            ask(new.host, new.port, lambda client: client.zadd("marker", {"0": 0}))
            await asyncio.wait({waiting}, timeout=0.2)
        assert waiting.done(), "the blocked BZPOPMIN stayed on the old primary"
        assert waiting.result() is not None and waiting.result()[0] == "marker"
    finally:
        await waiter.aclose()
        topology.stop()
