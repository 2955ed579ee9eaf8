"""`redis+cluster://` URLs: the parser, the settings (the `{bull}` default and the hash-tag
rule), and the client each profile gives on them. No server is needed: clients connect lazily."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from slackq.connection import (
    BLOCKING,
    OPERATOR,
    PROBE,
    PRODUCER,
    bullmq_connection,
    command_retry,
    redis_client,
    redis_location,
)
from slackq.errors import ConfigError
from slackq.metrics import track_connect
from slackq.redis_url import ClusterAddress, cluster_address, has_hash_tag, redis_kwargs
from slackq.settings import Settings, load_settings

URL = "redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2,[::1]:7002"


def test_the_parser_reads_every_part() -> None:
    assert cluster_address(URL) == ClusterAddress(
        nodes=(("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)), tls=False,
        node={"username": "app", "password": "s@cret"})
    address = cluster_address("rediss+cluster://:pw@h1:1/0?ssl_cert_reqs=none")
    assert address == ClusterAddress((("h1", 1),), True, {"password": "pw",
                                                          "ssl_cert_reqs": "none"})
    assert cluster_address("redis://h:1/0") is None
    assert redis_kwargs(URL) == {"username": "app", "password": "s@cret"}


@pytest.mark.parametrize("url", ["redis+cluster://", "redis+cluster://h1/3",
                                 "redis+cluster://h1:port", "redis+cluster://h1/?db=2"])
def test_a_malformed_url_is_refused_with_the_form(url: str) -> None:
    with pytest.raises(ValueError, match="redis\\+cluster"):
        cluster_address(url)


def test_messages_name_the_nodes_never_the_password() -> None:
    assert redis_location(URL) == "redis+cluster://app@10.0.0.1:7000,10.0.0.2:6379,::1:7002"


@pytest.mark.parametrize(("prefix", "tagged"), [
    ("{bull}", True), ("{slackq}x", True), ("a{b}", True), ("bull", False), ("{}bull", False),
    ("{bull", False), ("bull}", False), ("}{x}", True),
])
def test_hash_tags_as_redis_cluster_reads_them(prefix: str, tagged: bool) -> None:
    assert has_hash_tag(prefix) is tagged


def test_the_cluster_default_prefix_is_tagged_and_an_untagged_one_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings(redis_url=URL).queue_prefix == "{bull}"
    assert Settings(redis_url="redis://h:1/0").queue_prefix == "bull"
    assert Settings(redis_url=URL, queue_prefix="{acme}").queue_prefix == "{acme}"
    monkeypatch.setenv("REDIS_URL", URL)
    monkeypatch.setenv("QUEUE_PREFIX", "bull")
    with pytest.raises(ConfigError, match="QUEUE_PREFIX 'bull' has no hash tag") as caught:
        load_settings()
    assert "\n" not in str(caught.value) and "s@cret" not in str(caught.value)


@pytest.mark.parametrize(("profile", "socket_timeout", "retries", "counts"), [
    (PROBE, 1.0, 0, False), (OPERATOR, 10, 1, False), (PRODUCER, 0.5, 0, True),
    (BLOCKING, 15.0, 0, True),  # the worker sets its retry (set_worker_retry)
], ids=["probe", "operator", "producer", "blocking"])
async def test_every_profile_gives_a_cluster_client(
    profile: Any, socket_timeout: float, retries: int, counts: bool,
) -> None:
    client = redis_client(URL, profile)
    try:
        assert isinstance(client, RedisCluster)
        kwargs = client.get_connection_kwargs()
        assert (kwargs["socket_timeout"], kwargs["password"], kwargs["decode_responses"],
                client.retry.get_retries()) == (socket_timeout, "s@cret", True, retries)
        assert (kwargs.get("redis_connect_func") is track_connect) is counts
        for node in client.nodes_manager.startup_nodes.values():  # those found later share kwargs
            assert (node.connection_kwargs.get("redis_connect_func") is track_connect) is counts
        client.set_retry(command_retry(20_000).build())
        assert client.retry.get_retries() == 26
    finally:
        await client.aclose()


async def test_the_port_gets_a_cluster_client() -> None:
    connection = bullmq_connection(URL)
    assert isinstance(connection, RedisCluster)
    await connection.aclose()
