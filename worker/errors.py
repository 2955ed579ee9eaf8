"""The worker's error tree. Slack and Redis errors are converted into these at the boundary.

The Dispatcher (worker/runner.py) maps each branch to one BullMQ outcome:

* `PermanentError` → BullMQ `UnrecoverableError`: failed now, kept 24 h, never retried.
* `TransientError` (and any unexpected exception) → retried with the job's backoff plus jitter,
  up to the job's `attempts`.
* `Deferred` → `moveToDelayed` + `DelayedError`: back to `delayed` after `delay_seconds`,
  without burning an attempt and without holding a worker slot.
"""

from __future__ import annotations

from slackq.errors import SlackqError


class WorkerError(SlackqError):
    """Base of every error the worker raises on purpose."""


class PermanentError(WorkerError):
    """Retrying cannot help: the job fails at once with `code` in its failed reason."""

    code = "permanent"

    def __str__(self) -> str:
        detail = super().__str__()
        return f"{self.code}: {detail}" if detail else self.code


class InvalidPayload(PermanentError):
    """The job's data is not a Slack envelope the models accept."""

    code = "invalid_payload"


class NoInstallation(PermanentError):
    """Multi-workspace mode: the job's workspace has not installed the app (or uninstalled it)."""

    code = "no_installation"


class SlackPermanentError(PermanentError):
    """Slack answered `ok: false` with an error that will not change on retry."""

    def __init__(self, code: str, method: str) -> None:
        super().__init__(f"Slack {method} answered {code}")
        self.code = code
        self.method = method


class TransientError(WorkerError):
    """Worth retrying later with backoff (Slack 5xx, connection errors, timeouts, Redis down)."""


class SlackTransientError(TransientError):
    """Slack could not be reached, timed out, answered 5xx or a transient `ok: false` code.

    `refused` is True when Slack answered that it did not do it (`ok: false` below HTTP 500);
    otherwise the call may or may not have taken effect.
    """

    def __init__(self, reason: str, method: str, *, refused: bool = False) -> None:
        super().__init__(f"Slack {method}: {reason}")
        self.reason = reason
        self.method = method
        self.refused = refused


class RedisTransientError(TransientError):
    """slackq's own Redis commands (limiter, effects) failed after their short retry."""


class Deferred(WorkerError):
    """Not now: run this job again in `delay_seconds`, without counting an attempt."""

    def __init__(self, delay_seconds: float, reason: str) -> None:
        super().__init__(f"deferred {delay_seconds:.3f}s: {reason}")
        self.delay_seconds = max(0.0, delay_seconds)
        self.reason = reason


class SlackRateLimited(Deferred):
    """Slack answered HTTP 429; `delay_seconds` is its `Retry-After`."""

    def __init__(self, delay_seconds: float, method: str) -> None:
        super().__init__(delay_seconds, f"Slack 429 on {method}")
        self.method = method


class PacingLimited(Deferred):
    """slackq's own limiter (per channel / per team) has no slot for this call yet."""

    def __init__(self, delay_seconds: float, scope: str) -> None:
        super().__init__(delay_seconds, f"paced by {scope} limit")
        self.scope = scope
