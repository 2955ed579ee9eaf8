"""End to end through the Procfile's real processes: Slack -> web -> Redis -> worker -> Slack."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from harness.slack_standin import FakeSlack
from slackq.embedded import RedisProcess
from tests.module_stack import ModuleStack, stack_fixtures
from tests.slack_requests import (
    BOT_TOKEN,
    app_mention_envelope,
    encode,
    signed_headers,
)

shared, redis_server, fake_slack = stack_fixtures("e2e")


@pytest.fixture
def stack(redis_server: RedisProcess, shared: ModuleStack) -> str:
    return shared.base


def post_event(base: str, payload: dict, **extra_headers: str) -> httpx.Response:
    body = encode(payload)
    return httpx.post(f"{base}/slack/events", content=body,
                      headers={**signed_headers(body), **extra_headers}, timeout=5)


def test_app_mention_gets_one_threaded_reply(stack: str, fake_slack: FakeSlack) -> None:
    envelope = app_mention_envelope("Ev0E2E0001", thread_ts="1700000000.000001")
    assert post_event(stack, envelope).status_code == 200

    [call] = fake_slack.wait_for_calls("chat.postMessage", 1)
    assert call.args["channel"] == "C0CHAN001"
    assert call.args["thread_ts"] == "1700000000.000001"
    assert call.headers["Authorization"] == f"Bearer {BOT_TOKEN}"


def test_redelivered_event_is_replied_to_once(
    stack: str, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    envelope = app_mention_envelope("Ev0E2E0002")
    assert post_event(stack, envelope).status_code == 200
    fake_slack.wait_for_calls("chat.postMessage", 1)
    # Slack's retries carry X-Slack-Retry-Num; the job id (event_id) makes them no-ops.
    for retry in ("1", "2"):
        response = post_event(stack, envelope, **{"X-Slack-Retry-Num": retry,
                                                  "X-Slack-Retry-Reason": "http_timeout"})
        assert response.status_code == 200
    # A later event proves the worker kept consuming: once its reply is in, the duplicates
    # would have been processed too if they had been enqueued.
    later = app_mention_envelope("Ev0E2E0003", ts="1700000001.000100")
    assert post_event(stack, later).status_code == 200
    calls = fake_slack.wait_for_calls("chat.postMessage", 2)
    assert [c.args["thread_ts"] for c in calls] == ["1700000000.000100", "1700000001.000100"]
    # The reply is out before the job is recorded as completed: wait for that, with a deadline.
    deadline = time.monotonic() + 15
    while len(completed := sorted(redis_client.zrange("bull:slack-events:completed", 0, -1))) < 2:
        assert time.monotonic() < deadline, completed
        time.sleep(0.02)
    assert completed == ["Ev0E2E0002", "Ev0E2E0003"]


def test_bad_signature_is_rejected_and_nothing_is_enqueued(
    stack: str, redis_client: redis.Redis
) -> None:
    body = encode(app_mention_envelope("Ev0E2E0004"))
    headers = signed_headers(body, secret="not-the-signing-secret")
    response = httpx.post(f"{stack}/slack/events", content=body, headers=headers, timeout=5)
    assert response.status_code == 401
    assert redis_client.exists("bull:slack-events:Ev0E2E0004") == 0
    assert redis_client.llen("bull:slack-events:wait") == 0
    assert not [key for key in redis_client.keys("bull:slack-events:*") if "Ev0E2E0004" in key]


def test_url_verification_answers_the_challenge(stack: str) -> None:
    response = post_event(stack, {"type": "url_verification", "challenge": "3eZbrw1aB"})
    assert response.status_code == 200
    assert response.json() == {"challenge": "3eZbrw1aB"}
