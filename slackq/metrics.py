"""Prometheus primitives shared by the web and worker processes (prometheus-client).

One process runs one web app or one worker, so the metrics live in prometheus-client's default
registry, as that library intends; tests compare values before and after. Queue counts are read
from Redis at scrape time by `QueueCountsCollector` (no background loop, never stale).

What lives here is what both apps use: the Redis (re)connection counters (`track_connect`, passed
by the client factory in `slackq/connection.py`), the queue-count collector, the registry that
`/metrics` serves, and `labelled()`. Each app's own metrics live with it: `producers/metrics.py`
(the webhook) and `worker/metrics.py` (jobs, Slack calls, the worker's metrics port).
"""

from __future__ import annotations

import functools
import math
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import redis
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

# Latency buckets (seconds): the webhook's budget is ~2 s of Slack's 3; jobs run up to minutes.
FAST_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

REDIS_CONNECTS = Counter("slackq_redis_connects", "Redis connections established")
REDIS_RECONNECTS = Counter("slackq_redis_reconnects",
                           "Redis connections re-established after being lost")

_connected_before: weakref.WeakSet[Any] = weakref.WeakSet()


async def track_connect(connection: Any) -> None:
    """redis-py `redis_connect_func`: the usual handshake, then count (re)connections.

    A connection object that connects a second time lost its socket: that is a reconnect.
    """
    await connection.on_connect()
    REDIS_CONNECTS.inc()
    if connection in _connected_before:
        REDIS_RECONNECTS.inc()
    else:
        _connected_before.add(connection)


@functools.lru_cache(maxsize=1024)
def labelled(metric: Any, *label_values: str) -> Any:
    """`metric.labels(*label_values)`, looked up once: `labels()` takes a lock and validates
    on every call, which the worker would otherwise pay several times per job."""
    return metric.labels(*label_values)


# BullMQ's getCounts script: lists for wait/paused/active, sorted sets for the rest.
_LIST_STATES = ("wait", "paused", "active")
_ZSET_STATES = ("delayed", "prioritized", "waiting-children", "completed", "failed")


# How long a scrape's queue counts serve further scrapes: scrapers many or fast (or a public
# /metrics hammered) cost Redis at most one pipeline per second per process.
SCRAPE_CACHE_SECONDS = 1.0


class QueueCountsCollector(Collector):
    """`slackq_queue_jobs{queue, state}`, read from Redis at scrape time (LLEN / ZCARD, what
    BullMQ's `getCounts` reads). A scrape while Redis is down yields no queue samples.

    One client (the `PROBE` profile: 1 s timeouts, no retry) serves every scrape, and a read is
    reused for `max_age` seconds, a failed one too: scrapes open no connection of their own.
    """

    def __init__(self, url: str, prefix: str, queue: str,
                 max_age: float = SCRAPE_CACHE_SECONDS) -> None:
        self.url, self.prefix, self.queue, self.max_age = url, prefix, queue, max_age
        self._lock = threading.Lock()  # prometheus-client may collect in several threads
        self._client: redis.Redis | None = None
        self._read_at = -math.inf
        self._last: dict[str, int] = {}

    def counts(self) -> dict[str, int]:
        """The counts now, read from Redis (raises RedisError / OSError)."""
        with self._lock:
            return self._read()

    def recent_counts(self) -> dict[str, int]:
        """The counts at most `max_age` seconds old; {} if Redis did not answer then.

        Concurrent scrapes of stale counts wait for one read rather than each making their own.
        """
        with self._lock:
            if time.monotonic() - self._read_at >= self.max_age:
                try:
                    self._last = self._read()
                except (RedisError, OSError) as exc:
                    log.warning("metrics_queue_counts_unavailable", error=type(exc).__name__)
                    self._last = {}
                self._read_at = time.monotonic()
            return self._last

    def _read(self) -> dict[str, int]:
        base = f"{self.prefix}:{self.queue}:"
        pipe = self._redis().pipeline(transaction=False)
        for state in _LIST_STATES:
            pipe.llen(base + state)
        for state in _ZSET_STATES:
            pipe.zcard(base + state)
        values = pipe.execute()
        return dict(zip(_LIST_STATES + _ZSET_STATES, map(int, values), strict=True))

    def _redis(self) -> redis.Redis:
        # Synchronous: prometheus-client collects in a plain thread.
        from slackq.connection import PROBE, sync_redis_client  # connection.py imports this module

        if self._client is None:
            self._client = sync_redis_client(self.url, PROBE)
        return self._client

    def close(self) -> None:
        """Close the client (a later scrape opens a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("slackq_queue_jobs", "Jobs on the queue by state",
                                   labels=["queue", "state"])
        for state, count in self.recent_counts().items():
            family.add_metric([self.queue, state], count)
        yield family


class _Forward(Collector):
    """Expose another registry's metrics through this one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return iter(self.source.collect())


def exposition_registry(url: str, prefix: str, queue: str,
                        *extra: CollectorRegistry) -> CollectorRegistry:
    """What `/metrics` serves: the process's metrics, `extra` registries and the queue counts."""
    registry, _ = exposition_registry_with_counts(url, prefix, queue, *extra)
    return registry


def exposition_registry_with_counts(
    url: str, prefix: str, queue: str, *extra: CollectorRegistry,
) -> tuple[CollectorRegistry, QueueCountsCollector]:
    """`exposition_registry`, and its queue-count collector (for its owner to close)."""
    registry = CollectorRegistry(auto_describe=False)
    for source in (REGISTRY, *extra):
        registry.register(_Forward(source))
    counts = QueueCountsCollector(url, prefix, queue)
    registry.register(counts)
    return registry, counts
