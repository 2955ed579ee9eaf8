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
* The primary watch (`primary_check_seconds`, REDIS_SENTINEL_CHECK_SECONDS): redis-py asks the
  sentinels only when a connection (re)connects. A primary cut off from its replicas and
  sentinels but not from its clients keeps every connection working, so clients stayed on it
  until the partition healed and it was demoted (`READONLY`): 16 s in the partition campaign,
  and whatever the workers completed there was discarded with it (jobs run twice). Each pool
  asks every sentinel every `primary_check_seconds` (`SENTINEL GET-MASTER-ADDR-BY-NAME`, one
  round trip each, concurrently); when a majority of them names another primary than the one
  its connections are on, it disconnects those connections, busy ones too (a blocking
  `BZPOPMIN` ends with a connection error and its retry reconnects through the sentinels).

Internals relied on (redis-py 8.1, pinned with pool.py's): `connect_check_health`, `connect_to`,
`is_connected`, the pool's `is_master`, `get_master_address`, `master_address`,
`sentinel_manager`, `_available_connections` and `_in_use_connections`, and the manager's
`sentinels`.
tests/test_ha_sentinel.py fails if a reconnect stops finding the new primary;
tests/test_ha_partition.py if the watch stops moving the workers off an isolated primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import Counter
from typing import Any

import redis.asyncio as aioredis
import structlog
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

log = structlog.get_logger(__name__)
Address = tuple[str, int]


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
        pool = self.connection_pool
        if not self.is_connected and not self._addressed and pool.is_master:
            self.host, self.port = await pool.get_master_address()
        if isinstance(pool, ClosesSentinels):  # a weakref.proxy of it
            pool.watch_primary()
        await super().connect_check_health(check_health, retry_socket_connect)


class ResolvingSentinelSSLConnection(ResolvingSentinelConnection, SentinelManagedSSLConnection):
    """The same over TLS."""


def connection_class(tls: bool) -> type[SentinelManagedConnection]:
    return ResolvingSentinelSSLConnection if tls else ResolvingSentinelConnection


async def named_primary(manager: Sentinel, service: str, per_sentinel_s: float) -> Address | None:
    """The primary a majority of the sentinels names (`SENTINEL GET-MASTER-ADDR-BY-NAME`, all
    asked at once, each within `per_sentinel_s`); None without a majority (a sentinel may lag
    behind a failover, or sit on the wrong side of a partition with the old primary)."""
    async def ask(sentinel: aioredis.Redis) -> Address | None:
        reply = await asyncio.wait_for(sentinel.sentinel_get_master_addr_by_name(service),
                                       per_sentinel_s)
        if not isinstance(reply, (tuple, list)) or len(reply) != 2:
            return None  # the sentinels know no such primary
        return str(reply[0]), int(reply[1])

    replies = await asyncio.gather(*(ask(s) for s in manager.sentinels), return_exceptions=True)
    votes = Counter(reply for reply in replies if isinstance(reply, tuple))
    best = votes.most_common(1)
    return best[0][0] if best and best[0][1] * 2 > len(manager.sentinels) else None


async def _watch(pool_ref: weakref.ref[ClosesSentinels], interval: float) -> None:
    """Every `interval`, `check_primary` of the pool, while it exists (never holding it
    between checks, so an unclosed client can still be collected)."""
    while True:
        await asyncio.sleep(interval)  # the check's period, not a wait for an effect
        pool = pool_ref()
        if pool is None:
            return
        try:
            await pool.check_primary(per_sentinel_s=interval)
        except (RedisError, OSError, TimeoutError) as error:  # the next tick tries again
            log.debug("redis_primary_check_failed", error=type(error).__name__)
        del pool


class ClosesSentinels(SentinelConnectionPool):
    """redis-py's Sentinel pool, closing the client's sentinel connections with it, and
    leaving a primary the sentinels no longer name (the module's "primary watch")."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel,
                 primary_check_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self.primary_check_seconds = primary_check_seconds
        self._watcher: asyncio.Task[None] | None = None

    def watch_primary(self) -> None:
        """Start the primary watch, unless it runs (or is off); called as a connection opens,
        inside the client's event loop."""
        if not self.primary_check_seconds or not self.is_master:
            return
        if self._watcher is not None and not self._watcher.done():
            return
        self._watcher = asyncio.get_running_loop().create_task(
            _watch(weakref.ref(self), self.primary_check_seconds), name="redis-primary-watch")

    async def check_primary(self, per_sentinel_s: float) -> bool:
        """If a majority of the sentinels names a primary other than the one this pool's
        connections are on, disconnect those connections (busy ones too); return whether any
        was. The next command on each reconnects through the sentinels."""
        named = await named_primary(self.sentinel_manager, self.service_name, per_sentinel_s)
        if named is None:
            return False
        connections = [*self._available_connections, *self._in_use_connections]
        stale = [c for c in connections
                 if c.is_connected and (c.host, c.port) != named]  # type: ignore[attr-defined]
        if self.master_address != named:
            log.warning("redis_primary_moved", was=_text(self.master_address), now=_text(named),
                        connections=len(stale))
            self.master_address = named
        for connection in stale:
            await connection.disconnect(nowait=True)
        return bool(stale)

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await super().aclose()
        await self.sentinel_manager.aclose()


def _text(address: Address | None) -> str:
    return "" if address is None else f"{address[0]}:{address[1]}"


class LeanSentinelConnectionPool(LeanConnectionPool, ClosesSentinels):
    """A `LeanConnectionPool` whose connections find the primary through the sentinels."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        # LeanConnectionPool takes keywords only and hands them on to ClosesSentinels.
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
