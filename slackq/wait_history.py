"""How long jobs waited, per minute, kept in Redis for a week: the layout both sides share.

A job's wait is the time from when it was stored (`job.timestamp`) to its first start
(`processedOn` when BullMQ starts it for the first time: `attemptsStarted` 1). Retries and
deferrals are not waits: they are the job's own backoff or Slack's pacing.

Per minute, for the hour starting at `<hour>` (epoch seconds):

* `<prefix>:slackq:<queue>:stats:wait:<hour>`: a hash, `n:<minute>` jobs and `ms:<minute>` their
  waits summed (at most 120 fields: Redis keeps it as a compact listpack);
* `<prefix>:slackq:<queue>:stats:waitmax:<hour>`: a sorted set, member `<minute>`, score the
  longest wait (`ZADD GT`: several worker processes write the same minute).

Each expires `STATS_TTL_SECONDS` after its last write (8 days): a week of history, bounded
whatever the rate (at most 168 hours, 2 keys each, 60 minutes a key). Worker processes write it in
batches (worker/waits.py); the dashboard reads it (dashboard/history.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from slackq.job_index import STATS_TTL_SECONDS


@dataclass
class MinuteWaits:
    """The waits of one minute: how many, their sum and the longest (ms)."""

    n: int = 0
    total_ms: int = 0
    max_ms: int = 0

    def add(self, wait_ms: int) -> None:
        self.n += 1
        self.total_ms += wait_ms
        self.max_ms = max(self.max_ms, wait_ms)

    def merge(self, other: MinuteWaits) -> None:
        self.n += other.n
        self.total_ms += other.total_ms
        self.max_ms = max(self.max_ms, other.max_ms)


class WaitKeys:
    """The keys of one queue's wait history."""

    def __init__(self, prefix: str, queue: str) -> None:
        self.base = f"{prefix}:slackq:{queue}:stats"

    def sums(self, hour: int) -> str:
        return f"{self.base}:wait:{hour}"

    def maxima(self, hour: int) -> str:
        return f"{self.base}:waitmax:{hour}"


def write_commands(keys: WaitKeys, minutes: Mapping[int, MinuteWaits]) -> list[tuple[Any, ...]]:
    """The commands adding `minutes` (minute start, epoch seconds -> waits) to the history:
    per minute two `HINCRBY` and a `ZADD GT`, per hour touched two `EXPIRE`."""
    commands: list[tuple[Any, ...]] = []
    hours: set[int] = set()
    for minute, waits in sorted(minutes.items()):
        hour = minute // 3600 * 3600
        hours.add(hour)
        commands += [("HINCRBY", keys.sums(hour), f"n:{minute}", waits.n),
                     ("HINCRBY", keys.sums(hour), f"ms:{minute}", waits.total_ms),
                     ("ZADD", keys.maxima(hour), "GT", waits.max_ms, str(minute))]
    for hour in sorted(hours):
        commands += [("EXPIRE", keys.sums(hour), STATS_TTL_SECONDS),
                     ("EXPIRE", keys.maxima(hour), STATS_TTL_SECONDS)]
    return commands


async def read_waits(client: aioredis.Redis, keys: WaitKeys, since_s: int,
                     until_s: int) -> dict[int, MinuteWaits]:
    """The recorded minutes in [since, until) (epoch seconds): minute start -> waits."""
    hours = range(since_s // 3600 * 3600, until_s + 1, 3600)
    async with client.pipeline(transaction=False) as pipe:
        for hour in hours:
            pipe.hgetall(keys.sums(hour))
            pipe.zrange(keys.maxima(hour), 0, -1, withscores=True)
        replies = await pipe.execute()
    minutes: dict[int, MinuteWaits] = {}
    for sums, maxima in zip(replies[::2], replies[1::2], strict=True):
        _merge_hour(minutes, sums, maxima)
    return {minute: waits for minute, waits in minutes.items() if since_s <= minute < until_s}


def _merge_hour(minutes: dict[int, MinuteWaits], sums: Mapping[str, str],
                maxima: Iterable[tuple[str, float]]) -> None:
    for field, value in sums.items():
        kind, _, minute = str(field).partition(":")
        if not minute.isdigit():
            continue
        waits = minutes.setdefault(int(minute), MinuteWaits())
        if kind == "n":
            waits.n += int(value)
        elif kind == "ms":
            waits.total_ms += int(value)
    for member, score in maxima:
        if str(member).isdigit():
            waits = minutes.setdefault(int(member), MinuteWaits())
            waits.max_ms = max(waits.max_ms, int(score))
