"""A Redis connection pool that costs less CPU per command than redis-py's own.

Two costs of redis-py 8's asyncio client are cut here, for the commands on BullMQ's hot path:

* Packing: its asyncio connections encode every command in Python (~39 us for a BullMQ
  `EVALSHA` with a 1.1 KB payload on this VM), where its sync client uses hiredis' C packer
  (~6 us, the same bytes). The pool's connections pack with hiredis, through redis-py's own
  `HiredisRespSerializer` (a bool or None argument is still a `DataError`).
* Lending: around every command, redis-py 8's asyncio pools do a lot besides lending a
  connection: the blocking pool enters an `asyncio.Condition`, an `asyncio.timeout` and an async
  context manager to lend one and the condition again to take it back; both pools take an
  `asyncio.Lock`, dispatch an "after release" event and make three or four observability calls
  (no-ops unless OpenTelemetry is configured, but each an awaited coroutine): ~30 us of a
  140-190 us `EVALSHA` round trip on this VM.

Measured at 500 jobs/s on one worker process: CPU 60.6% -> 56.3% of a core (2 pairs).
Upstream-worthy, both: hiredis packing in redis-py's asyncio connections as in its sync ones,
and a fast path in its pools when no listener or meter is registered.

`LeanConnectionPool` keeps what matters: at most `max_connections` connections, a caller that
finds them all busy waits its turn (it never fails), and a connection is checked before it is
lent (`ensure_connection`: connected, nothing unread left on it from an interrupted command,
reconnected otherwise). It leaves out the rest, so it is not for a client that needs redis-py's
release events (streaming credential providers) or maintenance notifications (Redis Enterprise
cluster moves): slackq uses neither.

Both lean on redis-py internals: the pool's `get_available_connection`, `ensure_connection`,
`_in_use_connections`, `_available_connections` and `connection_class`, a connection's
`should_reconnect` and `pack_command` (which `pack_commands` calls), `HiredisRespSerializer`,
`HIREDIS_AVAILABLE` and `MaintNotificationsConfig`. pyproject.toml pins redis-py to the minor
release they were written for; tests/test_redis_pool.py checks each and names what would break.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ExecAbortError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import HIREDIS_AVAILABLE

if HIREDIS_AVAILABLE:
    import hiredis

REDIS_PY_RANGE = ">=8.1,<8.2"  # the releases it was written for; pyproject.toml pins the same

_LEAN_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {}
_SERIALIZER = HiredisRespSerializer() if HIREDIS_AVAILABLE else None


def _pack_command(_self: AbstractConnection, *args: Any) -> list[bytes]:
    """The command's bytes from hiredis' C packer; redis-py's `HiredisRespSerializer` makes the
    same bytes but first copies every argument through a Python generator (~4 us for a BullMQ
    script's ~26 arguments), which only a command name with a space or a `bytearray` need."""
    name = args[0]
    if type(name) is str and " " not in name:
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            pass  # a bytearray (converted below), or what redis-py refuses with DataError
    assert _SERIALIZER is not None
    return _SERIALIZER.pack(*args)  # type: ignore[no-any-return]


def lean_connection_class(
        connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` with commands packed by hiredis (when installed) and written without
    redis-py's per-command `asyncio.wait_for`.

    redis-py writes every command inside `asyncio.wait_for(..., socket_timeout)`, which on
    Python 3.11 wraps the write in a new Task: one Task and one extra event-loop pass per command
    (at 500 jobs/s ~10 % of a worker process's CPU, bench/README.md, issue 18 fourth pass). The
    write itself never waits unless the socket's buffer is over its high-water mark, so the
    timeout is applied only then; errors are mapped as redis-py maps them.
    """
    if connection_class not in _LEAN_CLASSES:
        base_send = connection_class.send_packed_command
        namespace: dict[str, Any] = {"__module__": __name__}
        if HIREDIS_AVAILABLE:  # `pack_commands` (pipelines) calls `pack_command` for each
            namespace["pack_command"] = _pack_command

        async def send_packed_command(self: AbstractConnection, command: Any,
                                      check_health: bool = True) -> None:
            writer = self._writer
            if (writer is None or not isinstance(command, list) or not self.is_connected
                    or (check_health and self.health_check_interval)):
                await base_send(self, command, check_health)  # connects, checks health
                return
            try:
                writer.writelines(command)
                transport = writer.transport
                if (self.socket_timeout and transport.get_write_buffer_size()
                        > transport.get_write_buffer_limits()[1]):
                    await asyncio.wait_for(writer.drain(), self.socket_timeout)
                else:
                    await writer.drain()  # does not wait; raises if the connection was lost
            except BaseException as exc:
                await self.disconnect(nowait=True)
                error = _write_error(exc)
                if error is exc:
                    raise
                raise error from (exc if isinstance(error, RedisConnectionError) else None)

        namespace["send_packed_command"] = send_packed_command
        _LEAN_CLASSES[connection_class] = type(
            f"Lean{connection_class.__name__}", (connection_class,), namespace)
    return _LEAN_CLASSES[connection_class]


def _write_error(exc: BaseException) -> BaseException:
    """What redis-py's `send_packed_command` raises for `exc` (its connection closed)."""
    if isinstance(exc, asyncio.TimeoutError):
        return RedisTimeoutError("Timeout writing to socket")
    if isinstance(exc, OSError):
        number, message = ("UNKNOWN", exc.args[0]) if len(exc.args) == 1 else exc.args[:2]
        return RedisConnectionError(f"Error {number} while writing to socket. {message}.")
    return exc


class LeanConnectionPool(aioredis.ConnectionPool):
    """A blocking pool: `get_connection` waits for a free connection instead of raising."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connection_class = lean_connection_class(self.connection_class)
        # Not bound to an event loop until a caller has to wait (Python >= 3.10).
        self._slots = asyncio.Semaphore(self.max_connections)
        self._lent: set[AbstractConnection] = set()  # each holds one slot until released

    async def get_connection(self, *_args: Any, **_options: Any) -> AbstractConnection:
        """A connected connection, checked; waits while all `max_connections` are lent out."""
        await self._slots.acquire()  # does not suspend while a slot is free
        connection: AbstractConnection | None = None
        try:
            connection = self.get_available_connection()  # type: ignore[no-untyped-call]
            await self.ensure_connection(connection)
        except BaseException:
            if connection is not None:
                self._in_use_connections.discard(connection)
                self._available_connections.append(connection)
            self._slots.release()
            raise
        self._lent.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        """Take `connection` back (disconnecting it first if it asked to reconnect).

        A connection this pool did not lend, or one released twice, frees no slot: an extra
        slot would let a caller past the wait into redis-py's `MaxConnectionsError`.
        """
        if connection not in self._lent:
            return
        self._lent.discard(connection)
        try:
            self._in_use_connections.discard(connection)
            if connection.should_reconnect():  # type: ignore[no-untyped-call]
                await connection.disconnect()
            self._available_connections.append(connection)
        finally:
            self._slots.release()


class LeanRedis(aioredis.Redis):
    """A client over a `LeanConnectionPool` whose commands skip redis-py's per-command layers.

    Around each command redis-py 8's `execute_command` calls `initialize()`, starts an
    observability timer, builds a failure closure, awaits two recorders (no-ops unless
    OpenTelemetry is configured), checks for `HIMPORT SET`, and reads the reply through
    `parse_response`'s option handling: together with the write's `wait_for` (see
    `lean_connection_class`) ~20 % of a worker process's CPU per job at 500 jobs/s. Here a
    command takes a connection from the pool, writes, reads and applies redis-py's response
    callback, inside the connection's own `Retry` (the same failures retried, the same backoff,
    the connection closed between tries), as redis-py does. Commands with options other than
    `keys` (which only client-side caching reads), `HIMPORT`, and single-connection use go
    through redis-py's own path.
    """

    def register_script(self, script: Any) -> LeanScript:  # type: ignore[override]
        """The script as a `LeanScript` (the BullMQ port registers its scripts so too)."""
        return LeanScript(self, script)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        pool = self.connection_pool
        name = args[0]
        if (self.single_connection_client or not isinstance(pool, LeanConnectionPool)
                or (options and (len(options) > 1 or "keys" not in options))
                or type(name) is not str or name[:7].upper() == "HIMPORT"):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        return await self._on_connection(pool, lambda connection: self._call(connection, args))

    @staticmethod
    async def _on_connection(pool: LeanConnectionPool,
                             call: Callable[[AbstractConnection], Awaitable[Any]]) -> Any:
        """`call` on a connection lent by `pool`, retried as redis-py retries a command (a
        failed try disconnects, the next reconnects)."""
        connection = await pool.get_connection()
        try:
            return await connection.retry.call_with_retry(
                lambda: call(connection),
                lambda error, failures: connection.disconnect(error=error,
                                                              failure_count=failures),
                with_failure_count=True)
        finally:
            await pool.release(connection)

    async def _call(self, connection: AbstractConnection, args: tuple[Any, ...]) -> Any:
        await connection.send_packed_command(connection.pack_command(*args))
        return await self._parsed(args[0], await connection.read_response())

    async def _parsed(self, name: Any, reply: Any) -> Any:
        """`reply` through redis-py's response callback for command `name`, if it has one."""
        callback = self.response_callbacks.get(name)
        if callback is None:
            return reply
        parsed = callback(reply)
        return await parsed if inspect.isawaitable(parsed) else parsed

    async def multi_exec(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """`MULTI`, `commands`, `EXEC` in one write on one pooled connection, retried as a
        command is: each command's reply, or the error Redis answered it with while running
        the transaction (a `NOSCRIPT`, say). A command Redis refused while queueing discards the
        transaction: its error is raised, as redis-py's `Pipeline.execute` raises it. What
        `pipeline(transaction=True)` does for these commands, without the pipeline's object,
        command stack and per-command layers."""
        pool = self.connection_pool
        if not isinstance(pool, LeanConnectionPool):
            async with self.pipeline(transaction=True) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return list(await pipe.execute(raise_on_error=False))
        return list(await self._on_connection(
            pool, lambda connection: self._transaction(connection, commands)))

    async def _transaction(self, connection: AbstractConnection,
                           commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        await connection.send_packed_command(
            connection.pack_commands([("MULTI",), *commands, ("EXEC",)]))
        refused: ResponseError | None = None
        for _ in range(len(commands) + 1):  # MULTI's OK, then QUEUED or an error per command
            try:
                await connection.read_response()
            except ResponseError as error:  # read whole: the next replies stay in order
                refused = refused or error
        try:
            replies = await connection.read_response()
        except ExecAbortError as error:
            raise (refused or error) from error
        if not isinstance(replies, list) or len(replies) != len(commands):
            await connection.disconnect()
            raise ResponseError("Wrong number of response items from transaction")
        return [reply if isinstance(reply, Exception) else await self._parsed(command[0], reply)
                for reply, command in zip(replies, commands, strict=True)]


class LeanScript(AsyncScript):
    """redis-py's `AsyncScript`, whose call on its own client sends the `EVALSHA` straight to
    `execute_command`.

    `AsyncScript.__call__` imports `Pipeline` and checks `isinstance(client, Pipeline)` on every
    call; `Redis` subclasses a typing Protocol, so that check is the slow
    `_ProtocolMeta.__instancecheck__` (2.7 % of a worker process's py-spy samples at 500 jobs/s,
    two `moveToActive` per job; the effect claim's, too). A `NOSCRIPT` loads the script and
    sends it again, as `AsyncScript` does; another client (a pipeline) takes `AsyncScript`'s
    own path.
    """

    async def __call__(self, keys: Sequence[Any] | None = None,
                       args: Iterable[Any] | None = None, client: Any = None) -> Any:
        own = self.registered_client
        if client is not None and client is not own:
            return await super().__call__(keys, args, client)
        keys = keys or []
        command = (len(keys), *keys, *(args or ()))
        try:
            return await own.execute_command("EVALSHA", self.sha, *command)
        except NoScriptError:
            self.sha = await own.script_load(self.script)
            return await own.execute_command("EVALSHA", self.sha, *command)


def lean_client(url: str, max_connections: int, **options: Any) -> LeanRedis:
    """A client over a `LeanConnectionPool` for `url` (redis://, rediss:// or unix://).

    The URL picks the connection class (TCP, TLS, unix socket) as `Redis.from_url` does;
    `options` win over the same options in its query string. The client owns the pool, so
    closing the client closes its connections.
    """
    # Maintenance notifications (RESP3 push messages of Redis Enterprise) would rewrite the pool
    # under the lock this pool does not take: off, whatever the URL says.
    options.setdefault("maint_notifications_config", MaintNotificationsConfig(enabled=False))
    kwargs = {**parse_url(url), **options, "max_connections": max_connections}
    pool = LeanConnectionPool(**kwargs)
    return cast(LeanRedis, LeanRedis.from_pool(pool))  # from_pool is typed as returning Redis
