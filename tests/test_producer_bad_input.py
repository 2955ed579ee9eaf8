"""Bad input gets a clear 4xx, never a 5xx or a traceback, and nothing is stored."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
import pytest
import redis

from producers.body import MAX_BODY_BYTES
from slackq.settings import Settings
from tests.slack_requests import SIGNING_SECRET, app_mention_envelope, encode, signed_headers
from tests.webhook_client import (
    FORM,
    JSON,
    command_form,
    interactive_form,
    webhook,
)

EVENT = encode(app_mention_envelope("Ev0BAD0001"))
COMMAND = urlencode(command_form("1.2.bad")).encode()
# Python's json reads it; BullMQ's job data (json.dumps(allow_nan=False)) would raise a 500.
# The worker could not tell which installation it is for (org-wide events name the org only).
NO_TEAM = encode({k: v for k, v in app_mention_envelope("Ev0BAD0002").items() if k != "team_id"})
INFINITE_EVENT = EVENT.replace(b'"event_ts"', b'"score":Infinity,"event_ts"')


def signed(body: bytes, content_type: str = JSON, **overrides: str) -> dict[str, str]:
    return {**signed_headers(body, content_type=content_type), **overrides}


def signed_raw(body: bytes, content_type: str = JSON) -> dict[str, str]:
    """Slack's v0 signature over raw bytes (slack-sdk's signer only takes UTF-8 bodies)."""
    ts = str(int(time.time()))
    digest = hmac.new(SIGNING_SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest.hexdigest()}",
            "Content-Type": content_type}


def unsigned(content_type: str = JSON, **headers: str) -> dict[str, str]:
    return {"Content-Type": content_type, **headers}


def form(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


Row = tuple[str, str, bytes, dict[str, str], int, str]


def rows() -> list[Row]:
    """(id, path, body, headers, expected status, expected error code), signed now: a row signed
    at import would be more than 5 minutes old by the time a long test run reaches it."""
    return [
        ("no signature headers", "/slack/events", EVENT, unsigned(), 401, "invalid_signature"),
        ("no signature", "/slack/events", EVENT,
         unsigned(**{"X-Slack-Request-Timestamp": str(int(time.time()))}), 401,
         "invalid_signature"),
        ("no timestamp", "/slack/events", EVENT,
         unsigned(**{"X-Slack-Signature": signed(EVENT)["X-Slack-Signature"]}), 401,
         "invalid_signature"),
        ("non-numeric timestamp", "/slack/events", EVENT,
         signed(EVENT, **{"X-Slack-Request-Timestamp": "not-a-number"}), 401, "invalid_signature"),
        ("signature of another body", "/slack/events", EVENT,
         signed(EVENT.replace(b"hello", b"hellp")), 401, "invalid_signature"),
        ("signature with another secret", "/slack/events", EVENT,
         signed_headers(EVENT, secret="not-the-secret"), 401, "invalid_signature"),
        ("timestamp 301 s old", "/slack/events", EVENT,
         signed_headers(EVENT, timestamp=int(time.time()) - 301), 401, "invalid_signature"),
        ("timestamp 10 min ahead", "/slack/events", EVENT,
         signed_headers(EVENT, timestamp=int(time.time()) + 600), 401, "invalid_signature"),
        ("unsigned command", "/slack/commands", COMMAND, unsigned(FORM), 401, "invalid_signature"),
        ("unsigned interactivity", "/slack/interactivity",
         form(interactive_form({"type": "block_actions", "trigger_id": "1.2.x"})), unsigned(FORM),
         401, "invalid_signature"),
        ("malformed JSON", "/slack/events", b'{"type": "event_callback"',
         signed(b'{"type": "event_callback"'), 400, "malformed"),
        ("JSON array", "/slack/events", b"[1, 2]", signed(b"[1, 2]"), 400, "malformed"),
        ("JSON with NaN", "/slack/events", b'{"type": NaN}', signed(b'{"type": NaN}'), 400,
         "malformed"),
        ("Infinity inside an event", "/slack/events", INFINITE_EVENT, signed(INFINITE_EVENT), 400,
         "malformed"),
        # slack-sdk's verifier decodes the body as UTF-8 first: such a body cannot verify.
        ("not UTF-8", "/slack/events", b'{"type": "\xff"}', signed_raw(b'{"type": "\xff"}'), 401,
         "invalid_signature"),
        ("event_callback without event_id", "/slack/events",
         encode({"type": "event_callback", "event": {"type": "message"}}),
         signed(encode({"type": "event_callback", "event": {"type": "message"}})), 400,
         "malformed"),
        ("event_callback naming no team nor enterprise", "/slack/events", NO_TEAM,
         signed(NO_TEAM), 400, "malformed"),
        ("integer-like event_id", "/slack/events",
         encode({**app_mention_envelope(), "event_id": "12345"}),
         signed(encode({**app_mention_envelope(), "event_id": "12345"})), 400, "malformed"),
        ("event_id with ':'", "/slack/events",
         encode({**app_mention_envelope(), "event_id": "Ev:1"}),
         signed(encode({**app_mention_envelope(), "event_id": "Ev:1"})), 400, "malformed"),
        ("lone surrogate event type", "/slack/events",
         b'{"type":"event_callback","event_id":"Ev1","event":{"type":"\\ud800"}}',
         signed(b'{"type":"event_callback","event_id":"Ev1","event":{"type":"\\ud800"}}'), 400,
         "malformed"),
        ("form field without '='", "/slack/commands", b"command=/deploy&junk",
         signed(b"command=/deploy&junk", FORM), 400, "malformed"),
        ("form not UTF-8 once decoded", "/slack/commands", b"command=%ff",
         signed(b"command=%ff", FORM), 400, "malformed"),
        ("form repeats a field", "/slack/commands", COMMAND + b"&command=/other",
         signed(COMMAND + b"&command=/other", FORM), 400, "malformed"),
        ("command without trigger_id", "/slack/commands", form({"command": "/deploy"}),
         signed(form({"command": "/deploy"}), FORM), 400, "malformed"),
        ("interactivity without payload", "/slack/interactivity", form({"x": "1"}),
         signed(form({"x": "1"}), FORM), 400, "malformed"),
        ("interactivity payload not JSON", "/slack/interactivity", form({"payload": "{nope"}),
         signed(form({"payload": "{nope"}), FORM), 400, "malformed"),
        ("interactivity payload without type", "/slack/interactivity",
         form({"payload": json.dumps({"trigger_id": "1.2.3"})}),
         signed(form({"payload": json.dumps({"trigger_id": "1.2.3"})}), FORM), 400, "malformed"),
        ("form neither command nor payload", "/slack/events", form({"x": "1"}),
         signed(form({"x": "1"}), FORM), 400, "malformed"),
        ("text/plain", "/slack/events", EVENT, signed(EVENT, "text/plain"), 415,
         "unsupported_media_type"),
        ("no content type", "/slack/events", EVENT,
         {k: v for k, v in signed(EVENT).items() if k != "Content-Type"}, 415,
         "unsupported_media_type"),
        ("JSON to the commands endpoint", "/slack/commands", EVENT, signed(EVENT), 415,
         "unsupported_media_type"),
        ("multipart to interactivity", "/slack/interactivity", COMMAND,
         signed(COMMAND, "multipart/form-data; boundary=x"), 415, "unsupported_media_type"),
    ]


@pytest.fixture
async def client(webhook_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with webhook(webhook_settings) as client:
        yield client


def assert_rejected(response: httpx.Response, status: int, error: str, redis_: redis.Redis) -> None:
    assert response.status_code == status, response.text
    assert response.json()["ok"] is False
    assert response.json()["error"] == error
    assert "Traceback" not in response.text and "File \"" not in response.text
    assert redis_.keys("bull:*") == [], "a rejected request stored something"


@pytest.mark.parametrize("row_id", [row[0] for row in rows()])
async def test_bad_request_is_a_clear_4xx_and_stores_nothing(
    client: httpx.AsyncClient, queue_redis: redis.Redis, row_id: str,
) -> None:
    [(path, body, headers, status, error)] = [row[1:] for row in rows() if row[0] == row_id]
    response = await client.post(path, content=body, headers=headers)
    assert_rejected(response, status, error, queue_redis)


@pytest.mark.parametrize("path", ["/slack/events", "/slack/commands", "/slack/interactivity"])
async def test_body_over_the_limit_is_413(
    client: httpx.AsyncClient, queue_redis: redis.Redis, path: str
) -> None:
    body = b'{"type":"event_callback","pad":"' + b"x" * MAX_BODY_BYTES + b'"}'
    content_type = JSON if path == "/slack/events" else FORM
    response = await client.post(path, content=body, headers=signed(body, content_type))
    assert_rejected(response, 413, "body_too_large", queue_redis)


async def test_streamed_body_over_the_limit_is_413(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536

    response = await client.post("/slack/events", content=chunks(), headers=unsigned())
    assert_rejected(response, 413, "body_too_large", queue_redis)


async def test_body_at_the_limit_is_accepted(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    envelope = app_mention_envelope("Ev0BIG0001")
    envelope["pad"] = ""
    envelope["pad"] = "x" * (MAX_BODY_BYTES - len(encode(envelope)))
    body = encode(envelope)
    assert len(body) == MAX_BODY_BYTES
    response = await client.post("/slack/events", content=body, headers=signed(body))
    assert response.status_code == 200
    assert queue_redis.exists("bull:slack-events:Ev0BIG0001")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/slack/events", "/slack/commands", "/slack/interactivity"])
async def test_wrong_method_is_405(
    client: httpx.AsyncClient, queue_redis: redis.Redis, method: str, path: str
) -> None:
    response = await client.request(method, path, content=EVENT, headers=signed(EVENT))
    assert_rejected(response, 405, "Method Not Allowed", queue_redis)
    assert response.headers["allow"] == "POST"
