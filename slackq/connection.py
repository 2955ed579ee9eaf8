"""Redis connections for BullMQ and for slackq's own commands, built from `REDIS_URL`.

Two corrections to the BullMQ port's defaults live here:

* redis-py 8 sets a 5 s `socket_timeout`; BullMQ's idle blocking `BZPOPMIN` outlives it and new jobs
  then wait up to ~20 s before pickup. BullMQ connections get `socket_timeout=None`.
* The port retries a failed command 20 times with backoff capped at 20 s (~350 s in all). A webhook
  cannot wait that long: the producer's client does not retry at all, and the webhook retries
  `Queue.add` itself within a time budget (`producers/enqueue.py`).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from slackq.errors import RedisMisconfigured
from slackq.metrics import track_connect
from slackq.pool import lean_client


def redis_kwargs(url: str) -> dict[str, Any]:
    """Keyword arguments for `redis.asyncio.Redis(...)` from a redis://, rediss:// or unix:// URL.
    """
    parsed: dict[str, Any] = dict(parse_url(url))
    connection_class = parsed.pop("connection_class", None)
    if connection_class is SSLConnection:
        parsed["ssl"] = True
    elif connection_class is UnixDomainSocketConnection:
        parsed["unix_socket_path"] = parsed.pop("path")
    return parsed


def is_unix_socket(url: str) -> bool:
    """Whether `url` names a unix socket (TCP options such as keepalive do not apply)."""
    return "unix_socket_path" in redis_kwargs(url)


def bullmq_connection(url: str) -> dict[str, Any]:
    """Connection options for a BullMQ `Worker` / `QueueEvents` (blocking commands allowed)."""
    return {
        **redis_kwargs(url),
        "socket_timeout": None,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "redis_connect_func": track_connect,  # counts (re)connections for /metrics
    }


def producer_client(url: str, *, timeout: float = 1.0) -> aioredis.Redis:
    """A pooled client for enqueueing: short timeouts, concurrent commands, no retry of its own.

    The caller retries (redis-py's default would retry 3 times with up to 10 s of backoff, out
    of reach of any time budget). Its pool is a `LeanConnectionPool` (less CPU per command than
    redis-py's): at most 64 connections, and a command that finds them all busy waits for one
    within the caller's budget instead of failing.
    """
    options: dict[str, Any] = {} if is_unix_socket(url) else {"socket_keepalive": True}
    return lean_client(
        url, 64,
        redis_connect_func=track_connect,  # counts (re)connections for /metrics
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries=0),
        **options,
    )


async def eviction_policy(client: aioredis.Redis) -> str:
    """The server's `maxmemory-policy`, read through INFO (CONFIG may be renamed in production)."""
    info = await client.info("memory")
    return str(info.get("maxmemory_policy", "unknown"))


async def require_noeviction(client: aioredis.Redis, *, allow_eviction: bool = False) -> str:
    """Refuse a Redis that may evict keys: an evicted job is a lost Slack event."""
    try:
        policy = await eviction_policy(client)
    except ResponseError as exc:
        raise RedisMisconfigured(f"could not read maxmemory-policy: {exc}") from exc
    if policy != "noeviction" and not allow_eviction:
        raise RedisMisconfigured(
            f"Redis maxmemory-policy is {policy!r}; BullMQ needs 'noeviction' "
            "(set maxmemory-policy noeviction, or SLACKQ_ALLOW_EVICTION=1 for development only)"
        )
    return policy
