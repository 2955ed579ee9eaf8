"""A job's retry policy, BullMQ's `attempts` and `backoff`: data plus pure functions.

The producer writes the policy built from the settings into every job's options
(`RetryPolicy.to_opts`, via `slackq.contract.JobOptions`); the worker reads back the policy the
job carries (`RetryPolicy.of_job`), so a job enqueued by a Node service with options of its own
is retried by those. No Redis, no clock, no randomness of its own: callers pass `rand`.

Backoff with jitter, compatible with Node BullMQ
------------------------------------------------
Jobs carry Node BullMQ's own option, `backoff: {type: "exponential", delay, jitter}`. Node workers
apply it as is. The Python port (bullmq 3.4.4) ignores `jitter` and only calls a custom strategy
for non-builtin types, so a Python worker computes the delay itself with Node's formula
(`backoff_delay_ms`) and hands the port that number as a `fixed` backoff for this one failure
(`worker.runner.Dispatcher`, through `slackq.bullmq_seam.set_retry_delay`, rewrites the in-memory
`job.opts["backoff"]`; the stored options stay Node's). Both runtimes therefore retry the same job
on the same schedule, jitter included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from slackq.settings import Settings


@dataclass(frozen=True)
class Backoff:
    """Node BullMQ's `BackoffOptions`: `type` is `exponential` or `fixed`, `jitter` in [0, 1]."""

    type: str
    delay_ms: int
    jitter: float = 0.0

    @classmethod
    def from_opts(cls, value: Any) -> Backoff | None:
        """Read a job's `backoff` option (a number means `fixed`, as in BullMQ)."""
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, int | float):
            return cls("fixed", int(value))
        if isinstance(value, Mapping) and value.get("type") in {"fixed", "exponential"}:
            jitter = min(max(float(value.get("jitter") or 0.0), 0.0), 1.0)
            return cls(str(value["type"]), int(value.get("delay") or 0), jitter)
        return None

    def to_opts(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"type": self.type, "delay": self.delay_ms}
        if self.jitter:
            opts["jitter"] = self.jitter
        return opts


@dataclass(frozen=True)
class RetryPolicy:
    """How many runs a job gets (`attempts`, the first included) and the waits between them."""

    attempts: int
    backoff: Backoff | None

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """This deployment's policy for the jobs it enqueues (`JOB_ATTEMPTS`, `JOB_BACKOFF_*`).

        Always `exponential`: it is the one type both Node BullMQ and the port build in that
        spaces retries out, so it is not a setting.
        """
        backoff = Backoff("exponential", settings.job_backoff_delay_ms, settings.job_backoff_jitter)
        return cls(settings.job_attempts, backoff)

    @classmethod
    def of_job(cls, opts: Mapping[str, Any]) -> RetryPolicy:
        """The policy a stored job carries; BullMQ's own defaults (1 attempt) where it has none."""
        return cls(int(opts.get("attempts") or 1), Backoff.from_opts(opts.get("backoff")))

    def to_opts(self) -> dict[str, Any]:
        """The job options that carry this policy (BullMQ `JobsOptions` keys)."""
        opts: dict[str, Any] = {"attempts": self.attempts}
        if self.backoff is not None:
            opts["backoff"] = self.backoff.to_opts()
        return opts

    def retry_delay_ms(self, attempts_made: int, rand: Callable[[], float]) -> int | None:
        """The wait before the next run after a failure, or None when slackq plans no retry.

        `attempts_made` does not count the run that just failed (BullMQ's `attemptsMade` while
        the job is active); `rand()` is uniform in [0, 1) and called only for a retry. None when
        the attempts are used up or the job has no backoff slackq computes (none, or a custom
        Node strategy).
        """
        if self.backoff is None or not will_retry(attempts_made, self.attempts):
            return None
        return backoff_delay_ms(self.backoff, attempts_made + 1, rand())

    def longest_delays_ms(self) -> list[int]:
        """The wait before each retry at its longest (jitter only shortens it), for the docs."""
        if self.backoff is None:
            return []
        return [_top_ms(self.backoff, n) for n in range(1, self.attempts)]


def _top_ms(backoff: Backoff, attempts_made: int) -> int:
    if backoff.type == "exponential":
        return round(math.pow(2, attempts_made - 1) * backoff.delay_ms)
    return backoff.delay_ms


def backoff_delay_ms(backoff: Backoff, attempts_made: int, rand: float) -> int:
    """Node BullMQ 6's delay before the next try, `attempts_made` counting the one that failed.

    `rand` is a uniform number in [0, 1) (Node's `Math.random()`).
    """
    top = _top_ms(backoff, attempts_made)
    if backoff.jitter <= 0:
        return int(top)
    low = top * (1 - backoff.jitter)
    return math.floor(rand * top * backoff.jitter + low)


def will_retry(attempts_made: int, attempts: int) -> bool:
    """Whether BullMQ retries after this failure (`attempts_made` not yet counting it)."""
    return attempts_made + 1 < attempts
