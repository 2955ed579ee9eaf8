"""The chaos controller: kill the server at seeded random moments and bring it back.

A kill is SIGKILL (`crash`), or SIGKILL followed by dropping every byte the server had not
fsynced (`powerloss`, through `PowerLossDisk`). The server then restarts on the same data
directory, and the controller waits for PONG (not LOADING) before the campaign goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
import structlog

from harness.ledger import Ledger
from harness.servers import ServerControl
from slackq.connection import PROBE, sync_redis_client

log = structlog.get_logger(__name__)


class UnsyncedDropper(Protocol):
    def drop(self) -> int:
        """Discard every write not yet fsynced; return how many bytes were discarded."""

    def aof_fsync_times(self) -> list[float]:
        """Wall-clock times at which an fsync made AOF data durable, oldest first."""


def kill_schedule(rng: random.Random, kills: int, duration: float,
                  warmup: float, tail: float) -> list[float]:
    """Kill offsets in seconds from the start: one random moment in each of `kills` slices.

    `warmup` lets the queue fill (delayed jobs older than the loss window exist before the
    first kill); `tail` keeps traffic flowing after the last kill.
    """
    if kills <= 0:
        return []
    span = max(0.1, duration - warmup - tail)
    slice_ = span / kills
    return [warmup + slice_ * (index + rng.uniform(0.1, 0.9)) for index in range(kills)]


@dataclass
class Chaos:
    server: ServerControl
    ledger: Ledger
    dropper: UnsyncedDropper | None = None
    pending: Callable[[], int] = lambda: 0
    min_uptime: float = 1.0
    ready_seconds: list[float] = field(default_factory=list)
    dropped_bytes: int = 0
    _last_kill_t: float = 0.0

    async def run(self, offsets: list[float]) -> None:
        """Kill at each offset (s from now), never sooner than `min_uptime` after a restart."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        ready_at = start
        for number, offset in enumerate(offsets, 1):
            due = max(start + offset, ready_at + self.min_uptime)
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.kill_and_restart(number)
            ready_at = loop.time()

    async def kill_and_restart(self, number: int) -> float:
        pending = self.pending()
        killed_at = await asyncio.to_thread(self._kill, number, pending)
        dropped = 0
        if self.dropper is not None:
            dropped = await asyncio.to_thread(self._power_cut, self.dropper, number)
            self.dropped_bytes += dropped
        self._last_kill_t = killed_at
        seconds = await asyncio.to_thread(self.server.start)
        self.ledger.ready(number, seconds)
        self.ready_seconds.append(seconds)
        log.info("server_restarted", kill=number, ready_seconds=round(seconds, 3),
                 dropped_bytes=dropped, pending_at_kill=pending)
        return seconds

    def _kill(self, number: int, pending: int) -> float:
        aof = aof_state(self.server.url)
        # The kill time is taken just before the signal: an ack recorded after it is younger.
        killed_at = self.ledger.kill(number, {"pending": pending, "aof": aof})
        self.server.kill()
        return killed_at

    def _power_cut(self, dropper: UnsyncedDropper, number: int) -> int:
        """Drop what the disk had not made durable, then record when it last did (the AOF fsyncs
        since the previous kill; the drop waits for the dead server's files to close, so an
        fsync still completing after the SIGKILL is among them)."""
        dropped = dropper.drop()
        fsyncs = [at for at in dropper.aof_fsync_times() if at > self._last_kill_t]
        self.ledger.power_cut(number, fsyncs)
        return dropped


AOF_FIELDS = ("aof_pending_bio_fsync", "aof_buffer_length", "aof_delayed_fsync",
              "aof_last_write_status")


def aof_state(url: str) -> dict[str, Any]:
    """The server's AOF state just before a kill, as evidence when a crash loses acked writes.

    With `everysec`, while a background fsync is still running Redis postpones its AOF write()
    (up to 2 s) but keeps replying: `aof_pending_bio_fsync` 1 at a kill means replies may have
    gone out for writes that only sat in `aof_buf`, which a SIGKILL loses.
    """
    with contextlib.suppress(redis.RedisError, OSError):
        # No retry: a read just before a kill must not delay the kill.
        client = sync_redis_client(url, PROBE.with_timeout(0.5))
        try:
            info = client.info("persistence")
        finally:
            client.close()
        return {name: info[name] for name in AOF_FIELDS if name in info}
    return {}
