"""Retry policy as data plus pure functions (no Redis, no clock, no randomness of their own).

Backoff with jitter, compatible with Node BullMQ
------------------------------------------------
Jobs carry Node BullMQ's own option, `backoff: {type: "exponential", delay, jitter}`. Node workers
apply it as is. The Python port (bullmq 3.4.4) ignores `jitter` and only calls a custom strategy
for non-builtin types, so a Python worker computes the delay itself with Node's formula
(`backoff_delay_ms`) and hands the port that number as a `fixed` backoff for this one failure
(`Dispatcher` rewrites the in-memory `job.opts["backoff"]`; the stored options stay Node's).
Both runtimes therefore retry the same job on the same schedule, jitter included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Slack `ok: false` codes that no retry can fix (the app, token or channel must change first).
PERMANENT_SLACK_ERRORS = frozenset({
    "access_denied", "account_inactive", "channel_not_found", "ekm_access_denied",
    "enterprise_is_restricted", "invalid_arguments", "invalid_auth", "invalid_blocks",
    "invalid_blocks_format", "invalid_charset", "invalid_form_data", "invalid_post_type",
    "is_archived", "message_not_found", "missing_scope", "msg_too_long", "no_permission",
    "no_text", "not_allowed_token_type", "not_authed", "not_in_channel", "org_login_required",
    "restricted_action", "restricted_action_read_only_channel",
    "restricted_action_thread_only_channel", "team_access_not_granted", "token_expired",
    "token_revoked", "too_many_attachments", "two_factor_setup_required", "user_not_found",
})
# Codes Slack documents as transient. Unknown codes are treated as transient too: a failed job is
# kept for inspection either way, and a few extra attempts are cheaper than a dropped event.
TRANSIENT_SLACK_ERRORS = frozenset({
    "fatal_error", "internal_error", "request_timeout", "service_unavailable",
    "ratelimited", "team_added_to_org",
})

# A 429's Retry-After is stretched by up to this fraction so that jobs limited together do not
# all come back in the same millisecond.
DEFER_SPREAD = 0.2


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


def backoff_delay_ms(backoff: Backoff, attempts_made: int, rand: float) -> int:
    """Node BullMQ 6's delay before the next try, `attempts_made` counting the one that failed.

    `rand` is a uniform number in [0, 1) (Node's `Math.random()`).
    """
    if backoff.type == "exponential":
        top = round(math.pow(2, attempts_made - 1) * backoff.delay_ms)
    else:
        top = backoff.delay_ms
    if backoff.jitter <= 0:
        return int(top)
    low = top * (1 - backoff.jitter)
    return math.floor(rand * top * backoff.jitter + low)


def will_retry(attempts_made: int, attempts: int) -> bool:
    """Whether BullMQ retries after this failure (`attempts_made` not yet counting it)."""
    return attempts_made + 1 < attempts


def defer_delay_ms(seconds: float, rand: float, spread: float = DEFER_SPREAD) -> int:
    """A deferral's delay: at least `seconds`, stretched by up to `spread` to break up herds."""
    base = max(0.0, seconds) * 1000
    return math.ceil(base * (1 + spread * rand))


def is_permanent_slack_error(code: str) -> bool:
    """A Slack `ok: false` code that will not succeed on retry."""
    return code in PERMANENT_SLACK_ERRORS


def retry_after_seconds(header: str | None, default: float = 1.0) -> float:
    """Slack's `Retry-After` header (whole seconds); `default` when missing or malformed."""
    if header is None:
        return default
    try:
        value = float(header.strip())
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default
