"""slackq/pool.py: the lean pool blocks instead of failing, never lends a dirty connection, and
packs commands into exactly the bytes redis-py's own packer makes (real redis-server); and the
redis-py release and internals it relies on are the ones it was written for."""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import inspect
import shutil
import tempfile
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from bullmq.redis_connection import RedisConnection
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
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, MaxConnectionsError, NoScriptError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import HIREDIS_AVAILABLE

from slackq.connection import PRODUCER, redis_client
from slackq.embedded import RedisProcess, free_port
from slackq.pool import (
    REDIS_PY_RANGE,
    LeanConnectionPool,
    LeanRedis,
    LeanScript,
    lean_client,
    lean_connection_class,
)
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
    hiredis_packed = b"".join(lean_connection_class(Connection)().pack_command(*args))
    assert hiredis_packed == python_packed


@pytest.mark.parametrize("bad", [True, None, object()])
def test_hiredis_packing_refuses_what_redis_py_refuses(bad: Any) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        lean_connection_class(Connection)().pack_command("SET", "k", bad)


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


async def test_lean_commands_answer_as_redis_py_does(redis_server: RedisProcess) -> None:
    """The short path (`LeanRedis.execute_command`) applies redis-py's response callbacks and
    raises its errors: the same answers as redis-py's own client, command by command."""
    lean = lean_client(redis_server.url, 2, decode_responses=True)
    plain = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    sha = await plain.script_load("return {KEYS[1], ARGV[1], 3}")

    async def answers(client: aioredis.Redis) -> list[Any]:
        await client.delete("z", "h")
        return [await client.set("k", "é"), await client.get("k"),
                await client.zadd("z", {"m": 2.5}), await client.bzpopmin(["z"], 1),
                await client.hset("h", mapping={"a": "1"}), await client.hgetall("h"),
                await client.evalsha(sha, 1, "key", "arg"), await client.exists("k", "none"),
                await client.bzpopmin(["z"], 0.01)]

    try:
        assert isinstance(lean, LeanRedis)
        assert await answers(lean) == await answers(plain)
        assert await answers(lean) == [True, "é", 1, ("z", "m", 2.5), 1, {"a": "1"},
                                       ["key", "arg", 3], 1, None]
        with pytest.raises(NoScriptError):
            await lean.evalsha("0" * 40, 0)
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await lean.get("h")
        assert await lean.get("k") == "é"  # the connection is still in step after errors
    finally:
        await lean.aclose()
        await plain.aclose()


@pytest.mark.parametrize("retries", [1, 0])
async def test_a_command_whose_connection_dies_is_retried_as_redis_py_retries(
    redis_server: RedisProcess, retries: int,
) -> None:
    """Redis closes the connection of a command in flight (a blocked BLPOP): with a retry
    left the command is sent again on a new connection and gets its answer; without one it
    fails. The lean client and redis-py's own behave alike (the latter checks the test)."""
    other = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    clients = {
        "lean": lean_client(redis_server.url, 1, decode_responses=True,
                            retry=Retry(NoBackoff(), retries), client_name="lean"),
        "plain": aioredis.Redis.from_url(redis_server.url, decode_responses=True,
                                         retry=Retry(NoBackoff(), retries), client_name="plain"),
    }
    try:
        for name, client in clients.items():
            waiting = asyncio.create_task(client.blpop([f"list-{name}"], 5))

            async def blocked(name: str = name) -> list[int]:
                return [c["id"] for c in await other.client_list()
                        if c["name"] == name and c["cmd"] == "blpop"]

            await wait_until(blocked, within=5, what=f"{name}: BLPOP blocked")
            first = await blocked()
            await other.execute_command("CLIENT KILL ID", first[0])
            if retries:
                await wait_until(functools.partial(_new_block, blocked, first), within=5,
                                 what=f"{name}: BLPOP sent again")
                await other.rpush(f"list-{name}", "v")
                assert await asyncio.wait_for(waiting, 5) == (f"list-{name}", "v")
            else:
                with pytest.raises(RedisConnectionError):
                    await asyncio.wait_for(waiting, 5)
    finally:
        for client in clients.values():
            await client.aclose()
        await other.aclose()


async def _new_block(blocked: Callable[[], Awaitable[list[int]]], old: list[int]) -> bool:
    return bool(set(await blocked()) - set(old))


async def test_a_lean_command_starts_no_task(redis_server: RedisProcess) -> None:
    """redis-py writes each command inside `asyncio.wait_for`, a new Task per command on
    Python 3.11 (checked, so the test can fail); the lean connection writes without one."""
    lean = lean_client(redis_server.url, 1, socket_timeout=5)
    plain = aioredis.Redis.from_pool(ConnectionPool.from_url(redis_server.url, socket_timeout=5))
    loop = asyncio.get_running_loop()
    started: list[object] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        started.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        await lean.ping()
        await plain.ping()
        loop.set_task_factory(factory)
        for _ in range(5):
            await plain.set("k", "v")
        assert len(started) >= 5
        started.clear()
        for _ in range(5):
            await lean.set("k", "v")
            await lean.multi_exec([("SET", "k", "v"), ("GET", "k")])
        assert started == []
    finally:
        loop.set_task_factory(None)
        await lean.aclose()
        await plain.aclose()


async def test_multi_exec_is_one_transaction_with_each_reply(redis_server: RedisProcess) -> None:
    """`LeanRedis.multi_exec`: the replies of a redis-py transaction pipeline; a script Redis
    does not know is that command's reply (the others applied); a command refused while
    queueing discards the whole transaction and is raised."""
    lean = lean_client(redis_server.url, 1, decode_responses=True)
    plain = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        commands: list[tuple[Any, ...]] = [("SET", "a", "1"), ("INCR", "a"), ("EXISTS", "a")]
        async with plain.pipeline(transaction=True) as pipe:
            for command in commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            expected = await pipe.execute()
        assert await lean.multi_exec(commands) == expected == [True, 2, 1]
        replies = await lean.multi_exec([("SET", "b", "1"), ("EVALSHA", "0" * 40, 0),
                                         ("GET", "b")])
        assert replies[0] is True and replies[2] == "1"
        assert isinstance(replies[1], NoScriptError)
        await plain.delete("c")
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            await lean.multi_exec([("SET", "c", "1"), ("GET",)])
        assert await plain.exists("c") == 0  # discarded
        assert await lean.get("a") == "2"  # the connection is still in step
    finally:
        await lean.aclose()
        await plain.aclose()


async def test_lean_scripts_run_reload_and_join_pipelines(redis_server: RedisProcess) -> None:
    """`LeanRedis.register_script` gives a `LeanScript`: it answers as redis-py's, loads itself
    again after SCRIPT FLUSH, and in a pipeline is queued as redis-py's script is."""
    lean = lean_client(redis_server.url, 2, decode_responses=True)
    try:
        script = lean.register_script("return {KEYS[1], ARGV[1]}")
        assert isinstance(script, LeanScript)
        assert await script(keys=["k"], args=["a"]) == ["k", "a"]
        await lean.script_flush()
        assert await script(keys=["k2"], args=["b"]) == ["k2", "b"]  # NOSCRIPT: loaded again
        await lean.script_flush()
        async with lean.pipeline(transaction=True) as pipe:
            await script(keys=["k3"], args=["c"], client=pipe)
            assert await pipe.execute() == [["k3", "c"]]
    finally:
        await lean.aclose()


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
    ("LeanConnectionPool.__init__ (lean_connection_class)", lambda: _pool().connection_class,
     Connection),
    ("LeanConnectionPool.__init__", lambda: _pool().max_connections, 2),
    ("LeanConnectionPool.release", lambda: _params(AbstractConnection.should_reconnect),
     ["self"]),
    ("LeanConnectionPool.release",
     lambda: inspect.iscoroutinefunction(AbstractConnection.disconnect), True),
    ("lean_connection_class (HIREDIS_AVAILABLE: hiredis installed)",
     lambda: HIREDIS_AVAILABLE, True),
    ("lean_connection_class (its write replaces this one)",
     lambda: _params(AbstractConnection.send_packed_command), ["self", "command", "check_health"]),
    ("lean_connection_class (the wait_for it leaves out)",
     lambda: "asyncio.wait_for(" in inspect.getsource(AbstractConnection.send_packed_command),
     True),
    ("lean_connection_class (_writer, is_connected, health_check_interval, socket_timeout)",
     lambda: [name for name in ("_writer", "health_check_interval", "socket_timeout")
              if not hasattr(Connection(), name)] + [type(Connection().is_connected)], [bool]),
    ("LeanRedis (the retry redis-py runs a command in)",
     lambda: "conn.retry.call_with_retry(" in inspect.getsource(aioredis.Redis.execute_command),
     True),
    ("LeanRedis (a retry's failure closes the connection so)",
     lambda: _params(AbstractConnection.disconnect)[:4],
     ["self", "nowait", "error", "failure_count"]),
    ("LeanScript (what AsyncScript does on a call)",
     lambda: "return await client.evalsha(self.sha, len(keys), *args)" in inspect.getsource(
         AsyncScript.__call__), True),
    ("LeanScript (the reload after NOSCRIPT)",
     lambda: "self.sha = await client.script_load(self.script)" in inspect.getsource(
         AsyncScript.__call__), True),
    ("LeanScript (the BullMQ port registers its scripts on the client it is given)",
     lambda: "self.conn.register_script(" in inspect.getsource(RedisConnection.loadCommands),
     True),
    ("LeanRedis (Retry.call_with_retry)", lambda: _params(Retry.call_with_retry),
     ["self", "do", "fail", "is_retryable", "with_failure_count"]),
    ("LeanRedis (commands and their only option, keys, that it takes the short path for)",
     lambda: "keys" in inspect.getsource(aioredis.Redis.parse_response), True),
    ("lean_connection_class", lambda: _params(HiredisRespSerializer.pack), ["self", "args"]),
    ("lean_connection_class", lambda: _params(AbstractConnection.pack_command), ["self", "args"]),
    ("lean_connection_class (pipelines pack through pack_command)",
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
