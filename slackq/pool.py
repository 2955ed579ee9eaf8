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
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.connection import HiredisRespSerializer
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import HIREDIS_AVAILABLE

REDIS_PY_RANGE = ">=8.1,<8.2"  # the releases it was written for; pyproject.toml pins the same

_HIREDIS_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def hiredis_packing(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` with commands packed by hiredis (when it is installed)."""
    if not HIREDIS_AVAILABLE:
        return connection_class
    if connection_class not in _HIREDIS_PACKING:
        packer = HiredisRespSerializer()

        def pack_command(_self: AbstractConnection, *args: Any) -> list[bytes]:
            return packer.pack(*args)  # type: ignore[no-any-return]

        # `pack_commands` (pipelines) calls `pack_command` for each command.
        _HIREDIS_PACKING[connection_class] = type(
            f"Hiredis{connection_class.__name__}", (connection_class,),
            {"pack_command": pack_command, "__module__": __name__})
    return _HIREDIS_PACKING[connection_class]


class LeanConnectionPool(aioredis.ConnectionPool):
    """A blocking pool: `get_connection` waits for a free connection instead of raising."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connection_class = hiredis_packing(self.connection_class)
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


def lean_client(url: str, max_connections: int, **options: Any) -> aioredis.Redis:
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
    return aioredis.Redis.from_pool(pool)
