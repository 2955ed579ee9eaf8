"""`redis+sentinel://` URLs: the one parser, the settings that accept them, and the client each
profile gives on them. No server is needed: clients connect lazily."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection

from slackq.ack import AckDurability
from slackq.connection import (
    BLOCKING,
    OPERATOR,
    PROBE,
    PRODUCER,
    SentinelAddress,
    bullmq_connection,
    redis_client,
    redis_location,
    sentinel_address,
    sync_redis_client,
)
from slackq.errors import ConfigError
from slackq.sentinel_pool import LeanSentinelConnectionPool
from slackq.settings import Settings, load_settings

URL = "redis+sentinel://app:s%40cret@10.0.0.1:26379,10.0.0.2:26380,[::1]/primary-a/3"


def test_the_parser_reads_every_part() -> None:
    assert sentinel_address(URL) == SentinelAddress(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26379)),
        master="primary-a", tls=False,
        node={"db": 3, "username": "app", "password": "s@cret"}, sentinel_password=None)


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+sentinel://h1/m", ((("h1", 26379),), "m", False, {}, None)),
    ("rediss+sentinel://:pw@h1:1/m?sentinel_password=x%26y&ssl_cert_reqs=none",
     ((("h1", 1),), "m", True, {"password": "pw", "ssl_cert_reqs": "none"}, "x&y")),
])
def test_short_forms_and_options(url: str, expected: tuple[Any, ...]) -> None:
    address = sentinel_address(url)
    assert address is not None
    assert (address.sentinels, address.master, address.tls, address.node,
            address.sentinel_password) == expected


@pytest.mark.parametrize("url", [
    "redis+sentinel://h1:26379", "redis+sentinel:///m", "redis+sentinel://h1/m/0/x",
    "redis+sentinel://h1:port/m", "redis+sentinel://h1/m/zero",
])
def test_a_malformed_url_is_refused_with_the_form(url: str) -> None:
    with pytest.raises(ValueError, match="redis\\+sentinel"):
        sentinel_address(url)


def test_other_urls_are_not_sentinel_urls() -> None:
    assert sentinel_address("redis://h:1/0") is None
    assert sentinel_address("unix:///tmp/r.sock") is None


def test_messages_name_the_sentinels_never_the_password() -> None:
    assert redis_location(URL) == \
        "redis+sentinel://app@10.0.0.1:26379,10.0.0.2:26380,::1:26379/primary-a/3"


def test_settings_accept_sentinel_urls_and_fold_in_the_sentinels_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for scheme in ("redis+sentinel", "rediss+sentinel"):
        assert Settings(redis_url=f"{scheme}://h1/m").redis_url == \
            f"{scheme}://h1/m?sentinel_check_seconds=1"
    assert Settings(redis_url="redis+sentinel://h1/m",
                    redis_sentinel_check_seconds=0).redis_url == "redis+sentinel://h1/m"
    assert Settings(redis_url="redis://h1/0").redis_url == "redis://h1/0"
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://h1,h2/m")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "p&w")
    settings = load_settings()
    address = sentinel_address(settings.redis_url)
    assert address is not None and address.sentinel_password == "p&w"
    assert "p&w" not in repr(settings)


@pytest.mark.parametrize(("env", "message"), [
    ({"REDIS_URL": "redis+cluster://h1/m"}, "REDIS_URL"),
    ({"REDIS_URL": "redis+sentinel://h1"}, "REDIS_URL: .*master-name"),
    ({"REDIS_URL": "redis://h1", "REDIS_SENTINEL_PASSWORD": "x"}, "REDIS_SENTINEL_PASSWORD"),
    ({"ACK_DURABILITY": "replicas:0"}, "ACK_DURABILITY"),
    ({"ACK_DURABILITY": "disk"}, "ACK_DURABILITY: .*fsync\\+replicas:N"),
    ({"ACK_TIMEOUT_MS": "2000"}, "ACK_TIMEOUT_MS must be below WEBHOOK_ENQUEUE_BUDGET"),
])
def test_bad_settings_stop_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


@pytest.mark.parametrize(("text", "expected"), [
    ("memory", AckDurability()), ("replicas:2", AckDurability(replicas=2)),
    ("fsync", AckDurability(fsync=True)), ("FSYNC+replicas:1", AckDurability(1, True)),
])
def test_ack_durability_forms(text: str, expected: AckDurability) -> None:
    assert AckDurability.parse(text) == expected
    assert str(expected) == text.lower()


@pytest.mark.parametrize(("profile", "pool_class", "socket_timeout", "max_connections"), [
    (PROBE, SentinelConnectionPool, 1.0, None),
    (OPERATOR, SentinelConnectionPool, 10, None),
    (PRODUCER, LeanSentinelConnectionPool, 0.5, 64),
    (BLOCKING.pooled(5), LeanSentinelConnectionPool, 15.0, 5),
], ids=["probe", "operator", "producer", "blocking-pooled"])
async def test_every_profile_asks_the_sentinels(
    profile: Any, pool_class: type, socket_timeout: float, max_connections: int | None,
) -> None:
    client = redis_client(URL, profile)
    try:
        pool = client.connection_pool
        assert isinstance(pool, pool_class)
        assert pool.service_name == "primary-a"  # type: ignore[attr-defined]
        kwargs = pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["db"], kwargs["password"],
                kwargs["decode_responses"]) == (socket_timeout, 3, "s@cret", True)
        if max_connections is not None:
            assert pool.max_connections == max_connections
        manager = pool.sentinel_manager  # type: ignore[attr-defined]
        hosts = [s.connection_pool.connection_kwargs["host"] for s in manager.sentinels]
        assert hosts == ["10.0.0.1", "10.0.0.2", "::1"]
    finally:
        await client.aclose()


async def test_tls_and_the_sentinels_password_reach_the_sentinels() -> None:
    client = redis_client("rediss+sentinel://h1/m?sentinel_password=sp", PROBE)
    try:
        pool = client.connection_pool
        assert issubclass(pool.connection_class, SentinelManagedSSLConnection)
        [sentinel] = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
        assert sentinel.connection_pool.connection_kwargs["password"] == "sp"
        assert "sentinel_password" not in pool.connection_kwargs
    finally:
        await client.aclose()


@pytest.mark.parametrize("profile", [PROBE, PRODUCER], ids=["redis-py-pool", "lean-pool"])
async def test_the_primary_watch_period_reaches_the_pool_not_the_nodes(profile: Any) -> None:
    client = redis_client("redis+sentinel://h1/m?sentinel_check_seconds=0.5", profile)
    try:
        pool = client.connection_pool
        assert pool.primary_check_seconds == 0.5  # type: ignore[attr-defined]
        assert "sentinel_check_seconds" not in pool.connection_kwargs
    finally:
        await client.aclose()
    client = redis_client("redis+sentinel://h1/m", profile)
    assert client.connection_pool.primary_check_seconds is None  # type: ignore[attr-defined]
    await client.aclose()


async def test_the_ports_own_connection_becomes_a_client_of_two() -> None:
    client = bullmq_connection(URL)
    assert not isinstance(client, dict)
    try:
        assert isinstance(client.connection_pool, LeanSentinelConnectionPool)
        assert client.connection_pool.max_connections == 2
    finally:
        await client.aclose()


def test_a_sync_client_asks_the_sentinels_too() -> None:
    with sync_redis_client(URL, PROBE) as client:
        assert isinstance(client, redis.Redis)
        assert client.connection_pool.service_name == "primary-a"  # type: ignore[attr-defined]
