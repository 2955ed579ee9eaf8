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

import os
import re
import socket
from typing import Any

import redis.asyncio as aioredis

from slackq.connection import BLOCKING, bullmq_connection, redis_client
from slackq.settings import Settings


def pooled_connection(url: str, size: int, client_name: str | None = None) -> aioredis.Redis:
    """A client for a Worker's commands and its blocking wait: `size` connections at most.

    The pool blocks (never fails) when all connections are busy. One connection may sit in the
    idle `BZPOPMIN`; the others carry the scripts of different jobs concurrently. It is a
    `LeanConnectionPool` (hiredis packing, no per-command bookkeeping): at 500 jobs/s it saves
    ~7% of a worker process's CPU against redis-py's `BlockingConnectionPool`.
    """
    return redis_client(url, BLOCKING.pooled(size), client_name=client_name)


def worker_name() -> str:
    """This process's name among the queue's workers: `<host>:<pid>` (what `CLIENT SETNAME`
    accepts: no spaces or control characters)."""
    host = re.sub(r"[^!-~]", "_", socket.gethostname())[:64] or "host"
    return f"{host}:{os.getpid()}"


def client_name(settings: Settings, name: str) -> str:
    """The client name of every Redis connection of worker `name`: BullMQ's own for a named
    Worker (`<prefix>:<queue>:w:<name>`), which the port also sets once it runs. The dashboard
    and `Queue.getWorkers()` find worker processes by it."""
    return f"{settings.queue_prefix}:{settings.queue_name}:w:{name}"


def worker_connection(settings: Settings,
                      name: str | None = None) -> dict[str, Any] | aioredis.Redis:
    """The Worker's `connection` option: the port's own single connection (options), or a pool
    of `WORKER_REDIS_CONNECTIONS` command connections plus one for the blocking wait; each
    connection named for worker `name` from the start (the port names only the connection it
    holds when it starts running)."""
    named = client_name(settings, name) if name else None
    if settings.worker_redis_connections > 1:
        return pooled_connection(settings.redis_url, settings.worker_redis_connections + 1,
                                 named)
    return bullmq_connection(settings.redis_url, named)
