"""The pools and connections behind a `redis+sentinel://` client (built in `slackq.connection`).

* `ResolvingSentinelConnection`: redis-py 8.1's `SentinelManagedConnection` asks the sentinels
  for the primary only in `connect()`, which the pool calls before lending a connection. A
  command that loses its connection reconnects inside its own retry through
  `send_packed_command` -> `connect_check_health`, which goes straight back to the host and port
  it had: the dead primary. Measured here, a worker's `BZPOPMIN` with the command retry kept
  knocking on the old primary for ~17 s after the new one was ready. This class asks the
  sentinels on every reconnect. Upstream-worthy.
* `LeanSentinelConnectionPool`: a `LeanConnectionPool` (waits for a free connection, hiredis
  packing) of those connections. redis-py's `SentinelConnectionPool` raises
  `MaxConnectionsError` when all its connections are lent; the worker and the webhook must wait
  their turn instead.
* Closing a client closes its connections to the sentinels too (each client has its own
  `Sentinel`): an unclosed socket is a ResourceWarning, an error under pytest.

Internals relied on (redis-py 8.1, pinned with pool.py's): `connect_check_health`, `connect_to`,
`is_connected`, the pool's `is_master`, `get_master_address` and `sentinel_manager`.
tests/test_ha_sentinel.py fails if a reconnect stops finding the new primary.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import RedisError
from redis.sentinel import SentinelConnectionPool as SyncSentinelConnectionPool

from slackq.pool import LeanConnectionPool


class ResolvingSentinelConnection(SentinelManagedConnection):
    """A connection to the primary that asks the sentinels where it is on every (re)connect."""

    _addressed = False  # inside connect_to: the address was just resolved

    async def connect_to(self, address: Any) -> None:
        self._addressed = True
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._addressed = False

    async def connect_check_health(self, check_health: bool = True,
                                   retry_socket_connect: bool = True) -> None:
        if not self.is_connected and not self._addressed and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)


class ResolvingSentinelSSLConnection(ResolvingSentinelConnection, SentinelManagedSSLConnection):
    """The same over TLS."""


def connection_class(tls: bool) -> type[SentinelManagedConnection]:
    return ResolvingSentinelSSLConnection if tls else ResolvingSentinelConnection


class ClosesSentinels(SentinelConnectionPool):
    """redis-py's Sentinel pool, closing the client's sentinel connections with it."""

    async def aclose(self) -> None:
        await super().aclose()
        await self.sentinel_manager.aclose()


class LeanSentinelConnectionPool(LeanConnectionPool, ClosesSentinels):
    """A `LeanConnectionPool` whose connections find the primary through the sentinels."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        # LeanConnectionPool takes keywords only and hands them on to SentinelConnectionPool.
        super().__init__(service_name=service_name, sentinel_manager=sentinel_manager, **kwargs)

    async def release(self, connection: AbstractConnection) -> None:
        """Take `connection` back; one still on a former primary is disconnected, so that it
        reconnects to the current one (redis-py's pool checks this; the lean one did not)."""
        await super().release(connection)
        address = self.master_address
        if address is not None and (connection.host, connection.port) != address:  # type: ignore[attr-defined]
            await connection.disconnect()


async def recheck_primary(client: aioredis.Redis) -> None:
    """Ask the sentinels where the primary is now (a Sentinel client; others: nothing to do).

    For a caller that suspects it is talking to a primary the others have left (an
    acknowledgement that did not come): if the primary moved, idle connections are dropped at
    once and busy ones when they come back, so the next command goes to the new one. (A Redis
    Cluster client has no pool: it reads the slot map again by itself after an error.)
    """
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        with contextlib.suppress(RedisError):
            await pool.get_master_address()  # type: ignore[no-untyped-call]


class SyncSentinelPool(SyncSentinelConnectionPool):
    """The synchronous pool (probes only: no retry, so no reconnect inside a command)."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:  # the client is closing (a new primary disconnects idle ones)
            self.sentinel_manager.close()
