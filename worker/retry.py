"""How the worker classifies failures and spaces out deferrals: pure functions, no Redis.

A job's retries (`attempts`, `backoff` with Node's jitter) are `slackq.retry_policy.RetryPolicy`,
shared with the producer that writes them into the job's options. This module holds what only the
worker decides: which Slack error codes no retry can fix, and how long a deferral (pacing, a 429)
waits.
"""

from __future__ import annotations

import math

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
