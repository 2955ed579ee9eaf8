"""slackq/pool.py: the lean pool blocks instead of failing, never lends a dirty connection, and
packs commands into exactly the bytes redis-py's own packer makes (real redis-server); and the
redis-py release and internals it relies on are the ones it was written for."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import shutil
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, MaxConnectionsError
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import HIREDIS_AVAILABLE

from slackq.connection import PRODUCER, redis_client
from slackq.embedded import RedisProcess, free_port
from slackq.pool import REDIS_PY_RANGE, LeanConnectionPool, hiredis_packing, lean_client
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent

PACKED_ARGS: list[tuple[Any, ...]] = [
    ("SET", "k", "v"),
    ("CONFIG GET", "maxmemory-policy"),  # a command name with a space is split
    ("EVALSHA", "a" * 40, 2, "bull:q:wait", "bull:q:active", 1700000000000, -1, 0.1, 1e20,
     2**70, "é", b"\x00\xff\r\n", memoryview(b"view"), bytearray(b"array"), "x" * 70_000),
]


@pytest.mark.parametrize("args", PACKED_ARGS, ids=["set", "two-word", "evalsha"])
def test_hiredis_packing_makes_the_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    python_packed = b"".join(bytes(c) for c in Connection().pack_command(*args))
    hiredis_packed = b"".join(hiredis_packing(Connection)().pack_command(*args))
    assert hiredis_packed == python_packed


@pytest.mark.parametrize("bad", [True, None, object()])
def test_hiredis_packing_refuses_what_redis_py_refuses(bad: Any) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        hiredis_packing(Connection)().pack_command("SET", "k", bad)


async def test_callers_wait_for_a_connection_instead_of_failing(
    redis_server: RedisProcess,
) -> None:
    """Six blocking commands on a pool of two: all complete, two connections at most.

    redis-py's plain pool raises MaxConnectionsError here (checked, so the test can fail).
    """
    plain = aioredis.Redis.from_pool(ConnectionPool.from_url(redis_server.url, max_connections=2))
    lean = lean_client(redis_server.url, 2)
    try:
        outcomes = await asyncio.gather(*(plain.blpop([f"empty{i}"], 0.2) for i in range(6)),
                                        return_exceptions=True)
        assert any(isinstance(outcome, MaxConnectionsError) for outcome in outcomes)
        replies = await asyncio.wait_for(
            asyncio.gather(*(lean.blpop([f"empty{i}"], 0.2) for i in range(6))), 10)
        assert replies == [None] * 6
        pool = lean.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) == 2
        assert await lean.ping()  # and the pool still lends after all that
    finally:
        await plain.aclose()
        await lean.aclose()


async def test_a_cancelled_command_leaves_no_reply_for_the_next_one(
    redis_server: RedisProcess,
) -> None:
    """A command cancelled while Redis holds it must not hand its late reply to the next
    command on the same (only) connection."""
    lean = lean_client(redis_server.url, 1, decode_responses=True)
    other = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await other.set("k", "own reply")
        waiting = asyncio.create_task(lean.blpop(["list"], 5))

        async def blocked() -> bool:
            return any(client["cmd"] == "blpop" for client in await other.client_list())

        await wait_until(blocked, within=5, what="BLPOP blocked in Redis")
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await other.lpush("list", "stale")  # a reply the cancelled BLPOP might still get
        assert await asyncio.wait_for(lean.get("k"), 5) == "own reply"
    finally:
        await lean.aclose()
        await other.aclose()


async def test_failed_connects_give_their_slot_back() -> None:
    """Nothing listens: every attempt fails fast, and more attempts than slots still fail
    fast (a leaked slot would make the third one wait forever)."""
    pool = LeanConnectionPool.from_url(f"redis://127.0.0.1:{free_port()}/0", max_connections=2,
                                       socket_connect_timeout=1)
    client = aioredis.Redis.from_pool(pool)
    try:
        for _ in range(4):
            with pytest.raises(RedisConnectionError):
                await asyncio.wait_for(client.execute_command("PING"), 5)
    finally:
        await client.aclose()


async def test_a_second_release_frees_no_second_slot(redis_server: RedisProcess) -> None:
    """Releasing one connection twice must not let a third caller past a pool of one into
    MaxConnectionsError: the third caller waits for the holder, as it should."""
    pool = LeanConnectionPool.from_url(redis_server.url, max_connections=1)
    client = aioredis.Redis.from_pool(pool)
    try:
        connection = await pool.get_connection()
        await pool.release(connection)
        await pool.release(connection)  # a caller's mistake: ignored
        held = await pool.get_connection()
        waiting = asyncio.create_task(client.ping())
        for _ in range(10):  # let it reach the pool's wait (without the fix: MaxConnectionsError)
            await asyncio.sleep(0)
        assert not waiting.done()
        await pool.release(held)
        assert await asyncio.wait_for(waiting, 5)
    finally:
        await client.aclose()


def test_maintenance_notifications_are_off_whatever_the_url_says() -> None:
    url = "redis://127.0.0.1:1/0?protocol=3"  # RESP3: redis-py turns them on by itself
    assert ConnectionPool.from_url(url).maint_notifications_enabled()
    assert not lean_client(url, 2).connection_pool.maint_notifications_enabled()


async def test_the_producer_client_stores_over_a_unix_socket() -> None:
    """The PRODUCER profile builds its lean pool from a unix:// URL (no TCP keepalive there)."""
    socket_dir = Path(tempfile.mkdtemp(prefix="sq-", dir="/tmp"))  # short: sun_path is 108 bytes
    server = RedisProcess(data_dir=socket_dir / "data",
                          overrides={"unixsocket": str(socket_dir / "r.sock"),
                                     "unixsocketperm": "700"})
    server.start()
    client = redis_client(f"unix://{socket_dir / 'r.sock'}?db=0", PRODUCER)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.set("k", "é").get("k")
        assert await pipe.execute() == [True, "é"]
        assert isinstance(client.connection_pool, LeanConnectionPool)
    finally:
        await client.aclose()
        server.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


# The redis-py internals slackq/pool.py relies on: (what would break, check, what is expected).
def _params(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _pool() -> ConnectionPool:
    return ConnectionPool(max_connections=2)


POOL_RELIANCES: list[tuple[str, Callable[[], object], object]] = [
    ("LeanConnectionPool.get_connection", lambda: _params(ConnectionPool.get_available_connection),
     ["self"]),
    ("LeanConnectionPool.get_connection", lambda: _params(ConnectionPool.ensure_connection),
     ["self", "connection"]),
    ("LeanConnectionPool.get_connection",
     lambda: inspect.iscoroutinefunction(ConnectionPool.ensure_connection), True),
    ("LeanConnectionPool.get_connection and .release",
     lambda: type(_pool()._in_use_connections), set),
    ("LeanConnectionPool.get_connection and .release",
     lambda: type(_pool()._available_connections), list),
    ("LeanConnectionPool.__init__ (hiredis_packing)", lambda: _pool().connection_class,
     Connection),
    ("LeanConnectionPool.__init__", lambda: _pool().max_connections, 2),
    ("LeanConnectionPool.release", lambda: _params(AbstractConnection.should_reconnect),
     ["self"]),
    ("LeanConnectionPool.release",
     lambda: inspect.iscoroutinefunction(AbstractConnection.disconnect), True),
    ("hiredis_packing (HIREDIS_AVAILABLE: hiredis installed)", lambda: HIREDIS_AVAILABLE, True),
    ("hiredis_packing", lambda: _params(HiredisRespSerializer.pack), ["self", "args"]),
    ("hiredis_packing", lambda: _params(AbstractConnection.pack_command), ["self", "args"]),
    ("hiredis_packing (pipelines pack through pack_command)",
     lambda: "self.pack_command(" in inspect.getsource(AbstractConnection.pack_commands), True),
    ("lean_client (maint_notifications_config)",
     lambda: "maint_notifications_config" in _params(ConnectionPool.__init__), True),
    ("lean_client (maint_notifications_config)",
     lambda: MaintNotificationsConfig(enabled=False).enabled, False),
    ("lean_client (parse_url picks the connection class)",
     lambda: parse_url("unix:///tmp/r.sock").get("connection_class"), UnixDomainSocketConnection),
    ("lean_client (parse_url picks the connection class)",
     lambda: parse_url("rediss://h:1/0").get("connection_class"), SSLConnection),
]


def test_redis_py_is_the_pinned_minor_release() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirement = next(Requirement(line) for line in dependencies
                       if Requirement(line).name == "redis")
    installed = importlib.metadata.version("redis")
    assert requirement.specifier == SpecifierSet(REDIS_PY_RANGE), (
        f"pyproject.toml allows redis{requirement.specifier}, slackq/pool.py was written for "
        f"{REDIS_PY_RANGE}: re-check its redis-py internals (the tests below), then update "
        "REDIS_PY_RANGE")
    assert installed in SpecifierSet(REDIS_PY_RANGE), (
        f"redis-py {installed} is installed; slackq/pool.py was written for {REDIS_PY_RANGE}")


@pytest.mark.parametrize(("breaks", "check", "expected"), POOL_RELIANCES,
                         ids=[f"{i}-{breaks.split()[0]}"
                              for i, (breaks, _, _) in enumerate(POOL_RELIANCES)])
def test_the_redis_py_internals_the_lean_pool_relies_on(
    breaks: str, check: Callable[[], object], expected: object
) -> None:
    try:
        actual = check()
    except (AttributeError, ImportError, TypeError) as exc:
        actual = f"{type(exc).__name__}: {exc}"
    assert actual == expected, (
        f"slackq.pool: {breaks} would break: redis-py gives {actual!r}, it was written for "
        f"{expected!r}")
