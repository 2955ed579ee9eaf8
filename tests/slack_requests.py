"""Build signed Slack requests the way Slack does (v0 HMAC over the raw body)."""

from __future__ import annotations

import json
import time
from typing import Any

from slack_sdk.signature import SignatureVerifier

SIGNING_SECRET = "test-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-000000000000-test-token-not-real"


def signed_headers(body: bytes, secret: str = SIGNING_SECRET, timestamp: int | None = None,
                   content_type: str = "application/json") -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
        "Content-Type": content_type,
    }


def app_mention_envelope(event_id: str = "Ev0TEST0001", *, team_id: str = "T0TEAM001",
                         channel: str = "C0CHAN001", ts: str = "1700000000.000100",
                         thread_ts: str | None = None,
                         text: str = "<@U0BOT> hello") -> dict[str, Any]:
    event: dict[str, Any] = {"type": "app_mention", "user": "U0USER001", "text": text,
                             "ts": ts, "channel": channel, "event_ts": ts}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {
        "token": "legacy-verification-token",
        "team_id": team_id,
        "api_app_id": "A0APP001",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(float(ts)),
        "authorizations": [{"team_id": team_id, "user_id": "U0BOT", "is_bot": True}],
    }


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
