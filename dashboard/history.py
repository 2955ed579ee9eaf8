"""Throughput over the last hour, day and week, and the Redis health panel.

Per-minute history lives in Redis, so it survives restarts of every process, and is bounded:

* stored jobs: the job index's `stats:stored:<hour>` hashes, written by the web process at enqueue
  time (slackq/job_index.py), expiring after 8 days;
* completed and failed jobs: BullMQ's own metrics lists (`<prefix>:<queue>:metrics:<kind>:data`,
  newest closed minute first, one entry a minute, trimmed to the worker's `maxDataPoints`),
  present only when the workers run with BullMQ's `metrics` option (`WORKER_METRICS_POINTS`);
* waits (stored -> first start): slackq/wait_history.py's per-minute sums, written by the
  workers in batches (worker/waits.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from slackq.doctor import gather_facts
from slackq.job_index import JobIndex
from slackq.wait_history import MinuteWaits, WaitKeys, read_waits

# (label, minutes covered, minutes per bar): at most 168 bars a chart.
PERIODS = (("hour", 60, 1), ("day", 1440, 15), ("week", 10080, 60))
WEEK_MINUTES = 10080


@dataclass(frozen=True)
class Series:
    label: str
    bars: list[int]
    minutes_per_bar: int

    @property
    def total(self) -> int:
        return sum(self.bars)


def bucket(per_minute: dict[int, int], now_minute: int, minutes: int, step: int) -> list[int]:
    """Sum `per_minute` (minute start in epoch seconds -> n) into bars of `step` minutes,
    oldest first, the last bar ending with the current minute."""
    bars = [0] * (minutes // step)
    first = now_minute - (minutes - 1) * 60
    for minute, count in per_minute.items():
        if first <= minute <= now_minute:
            bars[(minute - first) // 60 // step] += count
    return bars


async def bullmq_metrics(client: aioredis.Redis, base: str, kind: str) -> dict[int, int]:
    """BullMQ's per-minute `kind` ("completed" or "failed") counts: minute start -> n."""
    key = f"{base}:metrics:{kind}"
    async with client.pipeline(transaction=False) as pipe:
        pipe.hmget(key, "count", "prevTS", "prevCount")
        pipe.lrange(f"{key}:data", 0, WEEK_MINUTES - 1)
        (count, prev_ts, prev_count), data = await pipe.execute()
    if prev_ts is None:
        return {}
    last_closed = int(prev_ts) // 60_000 * 60 - 60
    counts = {last_closed - 60 * n: int(value) for n, value in enumerate(data) if int(value)}
    current = int(count or 0) - int(prev_count or 0)
    if current:
        counts[last_closed + 60] = current
    return counts


async def throughput(client: aioredis.Redis, index: JobIndex, base: str,
                     now: float | None = None) -> dict[str, list[Series]]:
    """Stored, completed and failed jobs per period: {"hour": [stored, completed, failed], ...}."""
    now_ms = int((time.time() if now is None else now) * 1000)
    now_minute = now_ms // 60_000 * 60
    sources = {
        # To the end of the current minute: jobs stored in it count from its first second.
        "stored": await index.stored_per_minute(now_ms - WEEK_MINUTES * 60_000,
                                                (now_minute + 60) * 1000),
        "completed": await bullmq_metrics(client, base, "completed"),
        "failed": await bullmq_metrics(client, base, "failed"),
    }
    return {period: [Series(label, bucket(counts, now_minute, minutes, step), step)
                     for label, counts in sources.items()]
            for period, minutes, step in PERIODS}


@dataclass(frozen=True)
class WaitSeries:
    """Waits over one period: the mean wait of each bar (ms), and over the whole period."""

    bars: list[int]
    minutes_per_bar: int
    jobs: int
    mean_ms: int
    max_ms: int
    label: str = "wait"


def wait_series(minutes: dict[int, MinuteWaits], now_minute: int, span: int,
                step: int) -> WaitSeries:
    """`minutes`' waits in bars of `step` minutes over the last `span` minutes."""
    first = now_minute - (span - 1) * 60
    shown = {minute: w for minute, w in minutes.items() if first <= minute <= now_minute}
    counts = bucket({m: w.n for m, w in shown.items()}, now_minute, span, step)
    sums = bucket({m: w.total_ms for m, w in shown.items()}, now_minute, span, step)
    jobs, total = sum(counts), sum(sums)
    return WaitSeries([s // n if n else 0 for s, n in zip(sums, counts, strict=True)], step,
                      jobs, total // jobs if jobs else 0,
                      max((w.max_ms for w in shown.values()), default=0))


async def waits(client: aioredis.Redis, keys: WaitKeys,
                now: float | None = None) -> dict[str, WaitSeries]:
    """The waits of each period: {"hour": WaitSeries, ...}."""
    now_s = int(time.time() if now is None else now)
    now_minute = now_s // 60 * 60
    minutes = await read_waits(client, keys, now_minute - WEEK_MINUTES * 60, now_minute + 60)
    return {period: wait_series(minutes, now_minute, span, step)
            for period, span, step in PERIODS}


async def health(client: aioredis.Redis, url: str) -> dict[str, Any]:
    """Durability and memory facts, and replication when there is any."""
    facts = await gather_facts(client, url)
    replication = await client.info("replication")
    return {
        **facts.as_dict(),
        "memory_ratio": facts.used_memory / facts.maxmemory if facts.maxmemory else None,
        "role": str(replication.get("role", "unknown")),
        "replicas": int(replication.get("connected_slaves", 0)),
        "master_link_status": replication.get("master_link_status"),
    }


def sparkline(values: list[int], height: int = 40) -> dict[str, Any]:
    """A bar chart as one SVG path of whole pixels (one attribute to render, not one element per
    bar). Numbers only, so nothing from a job reaches the markup; autoescape still applies."""
    slot = max(1, 336 // max(len(values), 1))
    top = max(values, default=0) or 1
    width = max(slot - 1, 1)
    bars = []
    for n, value in enumerate(values):
        if h := value * (height - 2) // top:
            bars.append(f"M{n * slot} {height - h}h{width}v{h}h-{width}z")
    return {"w": slot * len(values), "h": height, "path": " ".join(bars),
            "max": max(values, default=0)}
