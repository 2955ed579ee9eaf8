"""Operator endpoints of the web process: `GET /health/redis` (readiness) and `GET /metrics`.

`/health` (liveness: the process answers) stays in `producers.app`. Readiness asks Redis itself:
`PING`, then what an operator wants next to it (AOF on, eviction policy, version). It uses a
short-lived client of its own (the `PROBE` profile: 1 s timeouts, no retry), so a probe never
waits on the webhook's pool or its retry budget, and nothing is left open when the app stops.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from slackq.connection import PROBE, redis_client
from slackq.metrics import exposition_registry
from slackq.settings import Settings


async def redis_readiness(url: str) -> tuple[int, dict[str, object]]:
    """(HTTP status, body): 200 `{"healthy": true, ...}` when PING answers, else 503."""
    client = redis_client(url, PROBE)
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
    finally:
        await client.aclose()
    return 200, {
        "healthy": True,
        "latency_ms": latency_ms,
        "redis_version": info.get("redis_version"),
        "aof_enabled": int(info.get("aof_enabled", 0)) == 1,
        "aof_last_write_status": info.get("aof_last_write_status"),
        "maxmemory_policy": info.get("maxmemory_policy"),
    }


def ops_routes(settings: Settings, *extra: CollectorRegistry) -> list[Route]:
    """`/health/redis` and `/metrics` for `settings` (`extra`: the app's own registries)."""
    registry = exposition_registry(settings.redis_url, settings.queue_prefix,
                                   settings.queue_name, *extra)

    async def health_redis(_request: Request) -> Response:
        status, body = await redis_readiness(settings.redis_url)
        return JSONResponse(body, status_code=status)

    async def metrics(_request: Request) -> Response:
        # The queue-count collector does blocking Redis I/O: keep it off the event loop.
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/health/redis", health_redis, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
