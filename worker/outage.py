"""How a worker process rides out Redis refusing writes or being unreachable.

One `RedisOutage` per worker process. Whatever fails against Redis (a completion, an effect
record, the port's own fetches and lock renewals) reports it here; slots that must retry call
`backoff()`, which sleeps until the end of the current backoff step. The steps grow
exponentially from `base` to `cap` seconds and are shared by every slot of the process, so a
process retries a few times per step however many jobs it holds, and writes one log line per
step (`redis_unavailable`, then `redis_still_unavailable`), not one per attempt per slot: a
10 s outage logs about eight lines. `redis_available` ends the streak with its length and error
count. Every error is counted in `slackq_worker_redis_errors_total`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from redis.exceptions import (
    ClusterDownError,
    ExecAbortError,
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.metrics import record_redis_error

log = structlog.get_logger(__name__)

BACKOFF_BASE_SECONDS = 0.25
# Short enough that a job whose Slack call went through is recorded within ~2 s of Redis coming
# back (a later run of the job waits a lock duration for that record: worker/effects.py).
BACKOFF_CAP_SECONDS = 2.0
# Answers meaning "not now": memory full, a replica, a failover, a permission being changed, a
# busy script, a transaction refused for one of these. redis-py turns some into classes (and
# drops the code from the message); the others keep their code as the message's first word.
TRANSIENT_CLASSES: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ExecAbortError, OutOfMemoryError, ReadOnlyError,
    NoPermissionError, MasterDownError, TryAgainError, ClusterDownError, NoScriptError,
    ConnectionError, TimeoutError)
TRANSIENT_REPLIES = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
                     "NOREPLICAS", "NOPERM", "MISCONF", "BUSY", "EXECABORT", "NOSCRIPT")


def is_transient(error: BaseException) -> bool:
    """A Redis failure that waiting can cure (connection lost, timeout, a refused write)."""
    if isinstance(error, TRANSIENT_CLASSES):
        return True
    if isinstance(error, ResponseError):
        return str(error).startswith(TRANSIENT_REPLIES)
    cause = error.__cause__
    return cause is not None and cause is not error and is_transient(cause)


def kind(error: BaseException) -> str:
    """A bounded label for an error: its class, or a Redis reply's code."""
    cause = error.__cause__
    if cause is not None and cause is not error and type(error).__module__.startswith("worker"):
        return kind(cause)
    if type(error) is ResponseError:
        word = str(error).split(" ", 1)[0]
        return word if word in TRANSIENT_REPLIES else "ResponseError"
    return type(error).__name__


@dataclass
class _Streak:
    started: float
    step: int
    step_ends: float
    errors: int
    last_error: float


class RedisOutage:
    """The backoff and bounded logging of one worker process while Redis fails."""

    def __init__(self, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base = base
        self.cap = cap
        self.clock = clock
        self._streak: _Streak | None = None

    @property
    def ongoing(self) -> bool:
        return self._streak is not None

    def step_seconds(self, step: int) -> float:
        return min(self.cap, self.base * 2.0 ** step)

    def failed(self, error: BaseException, where: str) -> None:
        """Count one failure; log if it opens the streak or a new backoff step."""
        record_redis_error(where, kind(error))
        now = self.clock()
        streak = self._streak
        if streak is not None and now - streak.last_error > 4 * self.cap:
            streak = None  # nothing failed for a while: a new outage
        if streak is None:
            self._streak = _Streak(now, 0, now + self.base, 1, now)
            log.warning("redis_unavailable", error=kind(error), where=where,
                        retry_in_seconds=self.base)
            return
        streak.errors += 1
        streak.last_error = now
        if now >= streak.step_ends:
            streak.step += 1
            delay = self.step_seconds(streak.step)
            streak.step_ends = now + delay
            log.warning("redis_still_unavailable", error=kind(error), where=where,
                        seconds=round(now - streak.started, 1), errors=streak.errors,
                        retry_in_seconds=delay)

    def succeeded(self) -> None:
        """Redis took a write: end the streak, if any, with one line."""
        streak = self._streak
        if streak is None:
            return
        self._streak = None
        log.info("redis_available", seconds=round(self.clock() - streak.started, 1),
                 errors=streak.errors)

    async def wait_out(self) -> None:
        """During an outage, sleep until the current backoff step ends (fetching jobs waits
        here, so a process does not ask a failing Redis for work in a loop)."""
        streak = self._streak
        if streak is not None:
            await asyncio.sleep(max(0.0, streak.step_ends - self.clock()))

    async def backoff(self, error: BaseException, where: str) -> None:
        """Count `error`, then sleep until the current backoff step ends."""
        self.failed(error, where)
        streak = self._streak
        wait = self.base if streak is None else streak.step_ends - self.clock()
        await asyncio.sleep(max(0.01, wait))
