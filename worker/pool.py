"""The BullMQ Worker's Redis connection: the port's own single connection, or a pool.

The port opens redis-py with `single_connection_client=True` and an `asyncio.Lock` around every
command, so a worker's commands are strictly serial, one round trip at a time. With
`WORKER_REDIS_CONNECTIONS` above 1 the Worker gets a client over a small blocking pool instead,
so commands of different jobs overlap their round trips (a `LeanConnectionPool`, which costs
less CPU per command than redis-py's own pools). The port's other slow paths are worked around
by `slackq.bullmq_seam.FetchNextWorker`.

Upstream-worthy: a pipelined or pooled connection in the port's `RedisConnection`.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from slackq.connection import BLOCKING, bullmq_connection, redis_client
from slackq.settings import Settings


def pooled_connection(url: str, size: int) -> aioredis.Redis:
    """A client for a Worker's commands and its blocking wait: `size` connections at most.

    The pool blocks (never fails) when all connections are busy. One connection may sit in the
    idle `BZPOPMIN`; the others carry the scripts of different jobs concurrently. It is a
    `LeanConnectionPool` (hiredis packing, no per-command bookkeeping): at 500 jobs/s it saves
    ~7% of a worker process's CPU against redis-py's `BlockingConnectionPool`.
    """
    return redis_client(url, BLOCKING.pooled(size))


def worker_connection(settings: Settings) -> dict[str, Any] | aioredis.Redis:
    """The Worker's `connection` option: the port's own single connection (options), or a pool
    of `WORKER_REDIS_CONNECTIONS` command connections plus one for the blocking wait."""
    if settings.worker_redis_connections > 1:
        return pooled_connection(settings.redis_url, settings.worker_redis_connections + 1)
    return bullmq_connection(settings.redis_url)
