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
  and whatever the workers completed there was discarded with it (jobs run twice). So every
  `primary_check_seconds` (`SENTINEL GET-MASTER-ADDR-BY-NAME` to every sentinel, one round trip
  each, concurrently), when a majority of them names another primary than the one a pool's
  connections are on, those connections are disconnected, busy ones too (a blocking
  `BZPOPMIN` ends with a connection error and its retry reconnects through the sentinels).
* One `PrimaryWatch` per event loop and service + sentinel addresses, shared by every pool of
  the process there (a worker has 3-4: BullMQ's connection, the effect claims', the limiter's,
  ...): one round of questions per tick (any member's sentinel clients ask), and every pool
  leaves a former primary in the same tick. With a watch per pool they left up to an interval
  apart, and a claim reached the old primary after BullMQ's connection fetched the job from
  the new one ("no job hash": tests/test_worker_split_primary.py, which stays as a net). A pool
  joins as its first connection opens and leaves as it closes; the watch holds pools weakly
  (an unclosed client can still be collected) and ends with its last one. It ticks every
  `primary_check_seconds` (its pools' shortest; they all come from one setting).

Internals relied on (redis-py 8.1, pinned with pool.py's): `connect_check_health`, `connect_to`,
`is_connected`, the pool's `is_master`, `get_master_address`, `master_address`, `service_name`,
`sentinel_manager`, `_available_connections` and `_in_use_connections`, the manager's
`sentinels` and their `connection_pool.connection_kwargs` (host, port: the watch's key; the
manager reorders `sentinels`).
tests/test_ha_sentinel.py fails if a reconnect stops finding the new primary;
tests/test_ha_partition.py if the watch stops moving the workers off an isolated primary;
tests/test_ha_sentinel_watch.py if a process's pools stop sharing one watch.
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


class PrimaryWatch:
    """The primary watch of every Sentinel pool of one event loop on one service and set of
    sentinels: one round of questions per tick, and every pool leaves a former primary in it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.pools: weakref.WeakSet[ClosesSentinels] = weakref.WeakSet()  # unclosed ones may go
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, pool: ClosesSentinels) -> PrimaryWatch:
        """The watch of `pool`'s service and sentinels in the running loop (a new one if none)."""
        loop = asyncio.get_running_loop()
        sentinels = sorted(_address(s) for s in pool.sentinel_manager.sentinels)  # it reorders
        key = (id(loop), pool.service_name, tuple(sentinels))
        watch = _watches.get(key)
        if watch is None or watch.loop() is not loop:  # another loop that had the same id
            watch = _watches[key] = cls(loop)
        return watch

    def watching(self, pool: ClosesSentinels) -> bool:
        return (self.loop() is asyncio.get_running_loop() and pool in self.pools
                and self.task is not None and not self.task.done())

    def join(self, pool: ClosesSentinels) -> None:
        self.pools.add(pool)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name="redis-primary-watch")

    async def leave(self, pool: ClosesSentinels) -> None:
        """Forget `pool`; the last one to leave ends the watch."""
        self.pools.discard(pool)
        if self.pools or self.task is None:
            return
        task, self.task = self.task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        """A tick every `primary_check_seconds` (the shortest of the pools'), while a pool is
        left; pools are held only within a tick."""
        while periods := [pool.primary_check_seconds or 0 for pool in self.pools]:
            interval = min(periods)
            await asyncio.sleep(interval)  # the check's period, not a wait for an effect
            try:
                await self._tick(interval)
            except (RedisError, OSError, TimeoutError) as error:  # the next tick tries again
                log.debug("redis_primary_check_failed", error=type(error).__name__)

    async def _tick(self, per_sentinel_s: float) -> None:
        pools = list(self.pools)
        if not pools:
            return
        # Any pool's sentinel clients will do; a pool closing meanwhile only loses this round.
        named = await named_primary(pools[0].sentinel_manager, pools[0].service_name,
                                    per_sentinel_s)
        if named is None:
            return
        was = {pool.master_address for pool in pools} - {None, named}
        stale = [c for pool in pools for c in pool.follow(named)]
        if was:
            log.warning("redis_primary_moved", was=",".join(sorted(map(_text, was))),
                        now=_text(named), clients=len(pools), connections=len(stale))
        for connection in stale:  # after every pool moved: none yields before the last one
            await connection.disconnect(nowait=True)


_watches: weakref.WeakValueDictionary[tuple[int, str, tuple[Address, ...]], PrimaryWatch] = \
    weakref.WeakValueDictionary()  # a watch lives while a pool or its task holds it


def _address(sentinel: aioredis.Redis) -> Address:
    kwargs = sentinel.connection_pool.connection_kwargs
    return str(kwargs.get("host")), int(kwargs.get("port", 26379))


class ClosesSentinels(SentinelConnectionPool):
    """redis-py's Sentinel pool, closing the client's sentinel connections with it, and
    leaving a primary the sentinels no longer name (the module's "primary watch")."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel,
                 primary_check_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self.primary_check_seconds = primary_check_seconds
        self._watch: PrimaryWatch | None = None

    def watch_primary(self) -> None:
        """Join the primary watch, unless in it (or it is off); called as a connection opens,
        inside the client's event loop."""
        if not self.primary_check_seconds or not self.is_master:
            return
        if self._watch is None or not self._watch.watching(self):
            self._watch = PrimaryWatch.of(self)
            self._watch.join(self)

    def follow(self, named: Address) -> list[AbstractConnection]:
        """Take `named` as the primary; return the connections on another node (busy ones
        too), for the caller to disconnect: the next command on each reconnects through the
        sentinels."""
        self.master_address = named
        connections = [*self._available_connections, *self._in_use_connections]
        return [c for c in connections
                if c.is_connected and (c.host, c.port) != named]  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        if self._watch is not None:
            watch, self._watch = self._watch, None
            await watch.leave(self)
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
