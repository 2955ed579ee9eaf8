"""A local Redis Cluster for the tests (harness.cluster), and what they check on it: that every
key slackq wrote sits in its prefix's slot, and that no node ever answered CROSSSLOT."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from harness.cluster import ClusterTopology, key_slot
from harness.topology import ask
from slackq.connection import PROBE, sync_redis_client


def cluster_unavailable_reason() -> str | None:
    """Why a cluster cannot be started here (None: it can; CI has redis-server and redis-cli)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return "redis-server / redis-cli not on PATH (Debian's redis-server package has both)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    """Three primaries without replicas, once per module (~3 s to start)."""
    topology = ClusterTopology(Path(tmp_path_factory.mktemp("cluster"))).start()
    yield topology
    topology.stop()


def keys_outside_slot(keys: list[str], prefix: str) -> list[str]:
    """The keys among `keys` that do not hash to `prefix`'s slot."""
    slot = key_slot(prefix)
    return [key for key in keys if key_slot(key) != slot]


def crossslot_errors(topology: ClusterTopology) -> dict[int, str]:
    """Port -> the `errorstat_CROSSSLOT` line of every live node that ever answered CROSSSLOT
    (INFO errorstats, Redis 6.2+: it counts each error reply by its code)."""
    found = {}
    for node in topology.alive():
        stats = ask(node.host, node.port, lambda client: client.info("errorstats"))
        assert isinstance(stats, dict), f"node :{node.port} did not answer INFO errorstats"
        if "errorstat_CROSSSLOT" in stats:
            found[node.port] = str(stats["errorstat_CROSSSLOT"])
    return found


def reset_error_stats(topology: ClusterTopology) -> None:
    """Zero every live node's error counters (CONFIG RESETSTAT), so that a check sees only the
    errors of what follows."""
    for node in topology.alive():
        ask(node.host, node.port, lambda client: client.config_resetstat())


@contextmanager
def keys_written(topology: ClusterTopology) -> Iterator[set[str]]:
    """Every key written on the cluster's primaries inside the block, even one that lived only
    a moment (a lock): keyevent notifications, switched on for the block. The set is filled
    when the block ends (a PING then closes each node's feed: what came before it is in)."""
    written: set[str] = set()
    feeds: list[tuple[redis.Redis, redis.client.PubSub]] = []
    primaries = [node for node in topology.alive()
                 if (ask(node.host, node.port, lambda client: client.role()) or [""])[0]
                 == "master"]
    try:
        for node in primaries:
            client = sync_redis_client(f"redis://{node.host}:{node.port}/0", PROBE)
            feeds.append((client, client.pubsub()))
            client.config_set("notify-keyspace-events", "EA")  # keyevents, every command class
            feeds[-1][1].psubscribe("__keyevent@0__:*")
        yield written
        for _, feed in feeds:
            written |= _drain(feed)
    finally:
        for client, feed in feeds:
            client.config_set("notify-keyspace-events", "")
            feed.close()
            client.close()


def _drain(feed: redis.client.PubSub, within: float = 10.0) -> set[str]:
    keys: set[str] = set()
    feed.ping()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        message = feed.get_message(timeout=0.5)
        if message is None:
            continue
        if message["type"] == "pmessage":
            keys.add(str(message["data"]))
        elif message["type"] != "psubscribe":
            # The PING's answer: "pong" in RESP2; in RESP3 a plain PONG, which redis-py's
            # PubSub hands back as a message of an odd type ("P").
            return keys
    raise AssertionError(f"a node's keyevent feed did not answer PING within {within}s")
