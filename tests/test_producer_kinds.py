"""Each kind of Slack request, through the app in process, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
import structlog

from slackq.settings import Settings
from tests.slack_requests import app_mention_envelope
from tests.webhook_client import (
    block_actions_payload,
    command_form,
    interactive_form,
    post_event,
    post_form,
    shortcut_payload,
    view_closed_payload,
    view_submission_payload,
    webhook,
)

QUEUE = "bull:slack-events"


@pytest.fixture
async def client(webhook_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with webhook(webhook_settings) as client:
        yield client


def stored_job(queue_redis: redis.Redis, job_id: str) -> dict[str, Any]:
    """The job hash as Node BullMQ reads it: `name`, and `data` as a JSON string.

    Slack's legacy verification token is never stored, anywhere in the hash.
    """
    raw = queue_redis.hgetall(f"{QUEUE}:{job_id}")
    assert raw, f"job {job_id} is not stored"
    assert "legacy-verification-token" not in repr(raw)
    return {"name": raw["name"], "data": json.loads(raw["data"])}


def as_stored(payload: dict[str, Any]) -> dict[str, Any]:
    """What slackq stores of a Slack payload: all of it but the legacy `token`."""
    assert "token" in payload  # the test's payload carries one, as Slack's do
    return {key: value for key, value in payload.items() if key != "token"}


def waiting(queue_redis: redis.Redis) -> list[str]:
    return list(reversed(queue_redis.lrange(f"{QUEUE}:wait", 0, -1)))


async def test_url_verification_answers_the_challenge_and_stores_nothing(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    response = await post_event(client, {"type": "url_verification", "token": "t",
                                         "challenge": challenge})
    assert response.status_code == 200
    assert response.json() == {"challenge": challenge}
    assert waiting(queue_redis) == []


async def test_event_callback_is_stored_under_its_event_id_before_the_200(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    envelope = app_mention_envelope("Ev0KIND0001")
    response = await post_event(client, envelope)
    assert response.status_code == 200
    assert response.content == b""
    assert waiting(queue_redis) == ["Ev0KIND0001"]
    assert stored_job(queue_redis, "Ev0KIND0001") == {"name": "app_mention",
                                                          "data": as_stored(envelope)}


async def test_event_type_no_worker_handles_still_gets_200_and_a_job(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    envelope = app_mention_envelope("Ev0KIND0002")
    envelope["event"] = {"type": "emoji_changed", "subtype": "add", "name": "partyparrot"}
    assert (await post_event(client, envelope)).status_code == 200
    assert stored_job(queue_redis, "Ev0KIND0002")["name"] == "emoji_changed"


async def test_unknown_envelope_type_gets_200_and_no_job(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    assert (await post_event(client, {"type": "something_new", "team_id": "T1"})).status_code == 200
    assert waiting(queue_redis) == []


async def test_app_rate_limited_is_logged_and_counted_not_stored(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    notice = {"token": "t", "type": "app_rate_limited", "team_id": "T0TEAM001",
              "minute_rate_limited": 1518467820, "api_app_id": "A0APP001"}
    with structlog.testing.capture_logs() as logs:
        assert (await post_event(client, notice)).status_code == 200
        assert (await post_event(client, notice)).status_code == 200
    assert waiting(queue_redis) == []
    assert client.app.state.metrics.app_rate_limited._value.get() == 2  # type: ignore[attr-defined]
    limited = [e for e in logs if e["event"] == "slack_app_rate_limited"]
    assert [e["team_id"] for e in limited] == ["T0TEAM001", "T0TEAM001"]
    assert all(e["log_level"] == "warning" for e in limited)


async def test_redelivery_is_acknowledged_and_stores_nothing_new(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    envelope = app_mention_envelope("Ev0KIND0003")
    assert (await post_event(client, envelope)).status_code == 200
    for retry in ("1", "2", "3"):
        response = await post_event(client, envelope, **{"X-Slack-Retry-Num": retry,
                                                          "X-Slack-Retry-Reason": "http_timeout"})
        assert response.status_code == 200
    assert waiting(queue_redis) == ["Ev0KIND0003"]


async def test_concurrent_duplicate_deliveries_create_one_job(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    envelopes = [app_mention_envelope(f"Ev0DUP{n:04d}") for n in range(5)]
    deliveries = [post_event(client, envelope) for envelope in envelopes for _ in range(8)]
    responses = await asyncio.gather(*deliveries)
    assert [r.status_code for r in responses] == [200] * 40
    assert sorted(waiting(queue_redis)) == [f"Ev0DUP{n:04d}" for n in range(5)]
    for envelope in envelopes:
        assert queue_redis.get(f"{QUEUE}:de:{envelope['event_id']}") == envelope["event_id"]


async def test_slash_command_is_one_job_named_after_the_command(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    form = command_form("13345224609.738474920.8088930838d88f008e0")
    response = await post_form(client, "/slack/commands", form)
    assert (response.status_code, response.content) == (200, b"")
    job_id = "command-13345224609.738474920.8088930838d88f008e0"
    assert waiting(queue_redis) == [job_id]
    assert stored_job(queue_redis, job_id) == {"name": "command:/deploy",
                                                "data": as_stored(form)}
    # Its redelivery (same trigger_id) is the same job.
    assert (await post_form(client, "/slack/commands", form)).status_code == 200
    assert waiting(queue_redis) == [job_id]


async def test_slash_command_reply_is_configurable(
    webhook_settings: Settings, queue_redis: redis.Redis
) -> None:
    configured = webhook_settings.model_copy(update={"command_ack_text": "On it."})
    async with webhook(configured) as client:
        response = await post_form(client, "/slack/commands", command_form("1.2.ack"))
    assert response.status_code == 200
    assert response.json() == {"response_type": "ephemeral", "text": "On it."}
    assert waiting(queue_redis) == ["command-1.2.ack"]


@pytest.mark.parametrize("path", ["/slack/commands", "/slack/events"])
async def test_command_whose_text_says_payload_is_still_a_command(
    client: httpx.AsyncClient, queue_redis: redis.Redis, path: str
) -> None:
    # Bolt for Python searches the raw body for "payload" and loses this command.
    form = command_form("1.2.payloadtext", text='payload={"type":"block_actions"} please')
    assert (await post_form(client, path, form)).status_code == 200
    assert stored_job(queue_redis, "command-1.2.payloadtext") == {
        "name": "command:/deploy", "data": as_stored(form)}


@pytest.mark.parametrize(
    ("payload", "name", "job_id"),
    [
        (block_actions_payload("1.2.ba"), "interactive:block_actions", "interactive-1.2.ba"),
        (view_submission_payload("1.2.vs"), "interactive:view_submission", "interactive-1.2.vs"),
        (shortcut_payload("1.2.sc"), "interactive:shortcut", "interactive-1.2.sc"),
    ],
)
@pytest.mark.parametrize("path", ["/slack/interactivity", "/slack/events"])
async def test_interactivity_payload_is_one_job_named_after_its_type(
    client: httpx.AsyncClient, queue_redis: redis.Redis, path: str,
    payload: dict[str, Any], name: str, job_id: str,
) -> None:
    assert (await post_form(client, path, interactive_form(payload))).status_code == 200
    assert waiting(queue_redis) == [job_id]
    assert stored_job(queue_redis, job_id) == {"name": name, "data": as_stored(payload)}


async def test_payload_without_trigger_id_gets_a_stable_id_from_its_content(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    form = interactive_form(view_closed_payload())
    for _ in range(2):
        assert (await post_form(client, "/slack/interactivity", form)).status_code == 200
    [job_id] = waiting(queue_redis)
    prefix = "interactive-sha256-"
    assert job_id.startswith(prefix) and len(job_id) == len(prefix) + 32
    assert stored_job(queue_redis, job_id)["name"] == "interactive:view_closed"


async def test_ssl_check_gets_200_and_no_job(
    client: httpx.AsyncClient, queue_redis: redis.Redis
) -> None:
    response = await client.post("/slack/commands", content=b"ssl_check=1&token=legacy",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    assert waiting(queue_redis) == []


async def test_log_lines_carry_team_request_and_job_ids(client: httpx.AsyncClient) -> None:
    merge = structlog.contextvars.merge_contextvars
    with structlog.testing.capture_logs(processors=[merge]) as logs:
        await post_event(client, app_mention_envelope("Ev0LOG0001", team_id="T0LOGS"))
        await post_form(client, "/slack/commands", command_form("1.2.log", team_id="T0LOGS"))
        await post_form(client, "/slack/interactivity",
                        interactive_form(block_actions_payload("1.2.logi", team_id="T0LOGS")))
    stored = [e for e in logs if e["event"] == "job_stored"]
    ids = [(e["team_id"], e.get("event_id") or e.get("trigger_id"), e["job_id"]) for e in stored]
    assert ids == [
        ("T0LOGS", "Ev0LOG0001", "Ev0LOG0001"),
        ("T0LOGS", "1.2.log", "command-1.2.log"),
        ("T0LOGS", "1.2.logi", "interactive-1.2.logi"),
    ]
    # Never the message text or the legacy verification token.
    assert "hello" not in repr(logs) and "legacy-verification-token" not in repr(logs)
