"""slackq/connection.py: every client comes from the factory, and each profile gives the client
it promises (timeouts, retries, pool). No server is needed: clients connect lazily."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from slackq.connection import (
    BLOCKING,
    COMMAND_POOL_SIZE,
    OPERATOR,
    PATIENT_PROBE,
    PROBE,
    PRODUCER,
    Profile,
    bullmq_connection,
    command_profile,
    redis_client,
    sync_redis_client,
)
from slackq.metrics import track_connect
from slackq.pool import LeanConnectionPool

ROOT = Path(__file__).resolve().parent.parent
URL = "redis://app:secret@127.0.0.1:1/0"
UNIX_URL = "unix:///tmp/slackq-none.sock?db=0"


def settings_of(client: aioredis.Redis | redis.Redis) -> dict[str, Any]:
    kwargs = client.connection_pool.connection_kwargs
    retry = client.get_retry()
    return {
        "socket_timeout": kwargs.get("socket_timeout"),
        "connect_timeout": kwargs.get("socket_connect_timeout"),
        "retries": None if retry is None else retry.get_retries(),
        "lean": isinstance(client.connection_pool, LeanConnectionPool),
        "max_connections": client.connection_pool.max_connections,
        "counts_connects": kwargs.get("redis_connect_func") is track_connect,
        "decodes": kwargs.get("decode_responses"),
    }


REDIS_PY_POOL = aioredis.ConnectionPool().max_connections  # redis-py's own pool's default


@pytest.mark.parametrize(("profile", "expected"), [
    (PROBE, (1.0, 1.0, 0, False, REDIS_PY_POOL, False)),
    (PATIENT_PROBE, (5.0, 5.0, 0, False, REDIS_PY_POOL, False)),
    (OPERATOR, (10, 5, 1, False, REDIS_PY_POOL, False)),
    (command_profile(20_000), (5.0, 5.0, 26, True, COMMAND_POOL_SIZE, False)),
    (command_profile(1_000), (5.0, 5.0, 3, True, COMMAND_POOL_SIZE, False)),
    (PRODUCER, (0.5, 0.5, 0, True, 64, True)),
    (PRODUCER.with_timeout(0.2), (0.2, 0.2, 0, True, 64, True)),
    (BLOCKING.pooled(5), (15.0, 5, None, True, 5, True)),  # the worker sets its retry
], ids=["probe", "patient-probe", "operator", "command", "command-short-lock", "producer",
        "producer-policy", "blocking-pooled"])
async def test_each_profile_gives_the_client_it_promises(
    profile: Profile, expected: tuple[Any, ...]
) -> None:
    client = redis_client(URL, profile)
    try:
        settings = settings_of(client)
        assert settings["decodes"] is True
        assert (settings["socket_timeout"], settings["connect_timeout"], settings["retries"],
                settings["lean"], settings["max_connections"],
                settings["counts_connects"]) == expected
    finally:
        await client.aclose()


async def test_a_profile_wins_over_the_same_option_in_the_url() -> None:
    for profile in (PROBE, PRODUCER):
        client = redis_client(f"{URL}?socket_timeout=9&socket_connect_timeout=9", profile)
        try:
            assert settings_of(client)["socket_timeout"] == profile.socket_timeout
            assert settings_of(client)["connect_timeout"] == profile.connect_timeout
        finally:
            await client.aclose()


async def test_the_url_gives_credentials_unless_anonymous() -> None:
    client = redis_client(URL, PATIENT_PROBE)
    anonymous = redis_client(URL, PATIENT_PROBE, anonymous=True)
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["port"]) == ("app", "secret", 1)
        kwargs = anonymous.connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["port"]) == (None, None, 1)
    finally:
        await client.aclose()
        await anonymous.aclose()


async def test_tcp_keepalive_only_over_tcp() -> None:
    tcp, unix = redis_client(URL, PRODUCER), redis_client(UNIX_URL, PRODUCER)
    try:
        assert tcp.connection_pool.connection_kwargs["socket_keepalive"] is True
        assert "socket_keepalive" not in unix.connection_pool.connection_kwargs
        assert unix.connection_pool.connection_kwargs["path"] == "/tmp/slackq-none.sock"
    finally:
        await tcp.aclose()
        await unix.aclose()
    assert bullmq_connection(URL)["socket_keepalive"] is True
    assert "socket_keepalive" not in bullmq_connection(UNIX_URL)


def test_the_ports_options_leave_what_the_port_sets_to_the_port() -> None:
    """The port passes decode_responses and retry itself: passing them too is a TypeError."""
    options = bullmq_connection(URL)
    assert "decode_responses" not in options and "retry" not in options
    assert options["socket_timeout"] == 15 and options["socket_connect_timeout"] == 5
    assert options["redis_connect_func"] is track_connect


def test_sync_clients_for_code_that_cannot_await() -> None:
    with sync_redis_client(URL, PROBE, password="other") as client:
        assert isinstance(client, redis.Redis)
        settings = settings_of(client)
        assert (settings["socket_timeout"], settings["connect_timeout"],
                settings["retries"]) == (1.0, 1.0, 0)
        assert client.connection_pool.connection_kwargs["password"] == "other"
    with pytest.raises(ValueError, match="producer"):
        sync_redis_client(URL, PRODUCER)


# Where a Redis client, pool or retry may be built: the factory and the pool it uses.
FACTORY = {ROOT / "slackq" / "connection.py", ROOT / "slackq" / "pool.py"}
CONSTRUCTORS = frozenset({"Redis", "StrictRedis", "RedisCluster", "Sentinel", "from_url",
                          "from_pool", "ConnectionPool", "BlockingConnectionPool", "Retry"})


def clients_built(source: str) -> list[tuple[int, str]]:
    """(line, constructor) for every Redis client, pool or retry built in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = (node.func.id if isinstance(node.func, ast.Name)
                    else node.func.attr if isinstance(node.func, ast.Attribute) else "")
            if name in CONSTRUCTORS:
                found.append((node.lineno, name))
    return found


def runtime_files() -> Iterator[Path]:
    for folder in ("slackq", "producers", "worker", "dashboard", "harness"):
        yield from (path for path in sorted((ROOT / folder).rglob("*.py"))
                    if path not in FACTORY)


def test_every_client_comes_from_the_factory() -> None:
    """slackq/, producers/, worker/ and harness/ build no Redis client of their own (bench/
    does, on purpose: it measures the alternatives)."""
    findings = [f"{path.relative_to(ROOT)}:{line}: {name}(...)"
                for path in runtime_files() for line, name in clients_built(path.read_text())]
    assert not findings, ("build clients with slackq.connection.redis_client and a profile:\n"
                          + "\n".join(findings))


@pytest.mark.parametrize("code", [
    "client = aioredis.Redis(host='h', socket_timeout=1)",
    "client = redis.Redis.from_url(url)",
    "pool = BlockingConnectionPool(max_connections=4)",
    "retry = Retry(NoBackoff(), 0)",
])
def test_the_scan_flags_an_ad_hoc_client(code: str) -> None:
    assert clients_built(code)
