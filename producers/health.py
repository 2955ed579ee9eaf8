"""Operator endpoints of the web process: `GET /health/redis` (readiness) and `GET /metrics`.

`/health` (liveness: the process answers) stays in `producers.app`. Readiness asks Redis itself:
`PING`, then what an operator wants next to it (AOF on, eviction policy, version), through a
client of its own (the `PROBE` profile: 1 s timeouts, no retry, one pooled connection), so a probe
never waits on the webhook's pool or its retry budget.

Both endpoints sit on the public web port: a flood of requests must not become a flood of Redis
connections or commands. Each keeps one client for the app's life and reuses its answer from
Redis for about a second (`slackq.metrics.SCRAPE_CACHE_SECONDS`); concurrent requests while the
answer is stale wait for one probe. The app's lifespan closes them (`OpsEndpoints.close`).
"""

from __future__ import annotations

import asyncio
import math
import time

import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from slackq.connection import PROBE, redis_client
from slackq.metrics import SCRAPE_CACHE_SECONDS, exposition_registry_with_counts
from slackq.settings import Settings

Readiness = tuple[int, dict[str, object]]


async def redis_readiness(client: aioredis.Redis) -> Readiness:
    """(HTTP status, body): 200 `{"healthy": true, ...}` when PING answers, else 503."""
    started = time.monotonic()
    try:
        await client.ping()
        latency_ms = round((time.monotonic() - started) * 1000, 2)
        try:
            info = await client.info()
        except (RedisError, OSError, TimeoutError):
            info = {}  # answering PING is what readiness means; the rest is information
    except (RedisError, OSError, TimeoutError) as exc:
        return 503, {"healthy": False, "error": type(exc).__name__}
    return 200, {
        "healthy": True,
        "latency_ms": latency_ms,
        "redis_version": info.get("redis_version"),
        "aof_enabled": int(info.get("aof_enabled", 0)) == 1,
        "aof_last_write_status": info.get("aof_last_write_status"),
        "maxmemory_policy": info.get("maxmemory_policy"),
    }


class CachedReadiness:
    """`redis_readiness` over one pooled connection, its answer reused for `max_age` seconds."""

    def __init__(self, url: str, max_age: float = SCRAPE_CACHE_SECONDS) -> None:
        self.url, self.max_age = url, max_age
        self._client: aioredis.Redis | None = None
        self._lock: asyncio.Lock | None = None  # made in the app's event loop
        self._checked_at = -math.inf
        self._last: Readiness = (503, {"healthy": False, "error": "not_checked"})

    async def check(self) -> Readiness:
        """The readiness at most `max_age` seconds old (one probe for concurrent callers)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if time.monotonic() - self._checked_at >= self.max_age:
                if self._client is None:
                    self._client = redis_client(self.url, PROBE.pooled(1))
                self._last = await redis_readiness(self._client)
                self._checked_at = time.monotonic()
            return self._last

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class OpsEndpoints:
    """`/health/redis` and `/metrics` for `settings` (`extra`: the app's own registries)."""

    def __init__(self, settings: Settings, *extra: CollectorRegistry) -> None:
        self.registry, self._counts = exposition_registry_with_counts(
            settings.redis_url, settings.queue_prefix, settings.queue_name, *extra)
        self.readiness = CachedReadiness(settings.redis_url)
        self.routes = [
            Route("/health/redis", self.health_redis, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    async def health_redis(self, _request: Request) -> Response:
        status, body = await self.readiness.check()
        return JSONResponse(body, status_code=status)

    async def metrics(self, _request: Request) -> Response:
        # The queue-count collector does blocking Redis I/O: keep it off the event loop.
        body = await run_in_threadpool(generate_latest, self.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def close(self) -> None:
        """Close both clients (the app's lifespan calls this on shutdown)."""
        await self.readiness.close()
        await run_in_threadpool(self._counts.close)
