"""The webhook app in process (httpx.ASGITransport, lifespan run); Slack-shaped requests."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis

from producers.app import create_app
from producers.enqueue import EnqueuePolicy
from slackq.embedded import RedisProcess
from slackq.settings import Settings
from tests.slack_requests import SIGNING_SECRET, encode, signed_headers

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One real redis-server for a test module whose tests never stop it (FLUSHALL between)."""
    server = RedisProcess(data_dir=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def webhook_settings(module_redis: RedisProcess) -> Iterator[Settings]:
    """Settings of a web process on `module_redis`, emptied first (no Web API needed)."""
    with redis.Redis.from_url(module_redis.url) as client:
        client.flushall()
    yield Settings(redis_url=module_redis.url, slack_signing_secret=SIGNING_SECRET,
                   log_format="console")


@pytest.fixture
def queue_redis(module_redis: RedisProcess) -> Iterator[redis.Redis]:
    """A plain client on `module_redis`, to look at what the webhook stored."""
    with redis.Redis.from_url(module_redis.url, decode_responses=True) as client:
        yield client


@asynccontextmanager
async def webhook(settings: Settings, policy: EnqueuePolicy | None = None,
                  ) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the app of `settings`, its lifespan (the Redis connection) running."""
    app = create_app(settings, policy)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slackq.test",
                                     timeout=10) as client:
            client.app = app  # type: ignore[attr-defined]  # tests read metrics from it
            yield client


async def post_signed(client: httpx.AsyncClient, path: str, body: bytes, content_type: str,
                      **extra: str) -> httpx.Response:
    """POST `body` signed as Slack signs it, with `extra` headers (e.g. X-Slack-Retry-Num)."""
    headers = {**signed_headers(body, content_type=content_type), **extra}
    return await client.post(path, content=body, headers=headers)


async def post_event(client: httpx.AsyncClient, payload: dict[str, Any],
                     **extra: str) -> httpx.Response:
    return await post_signed(client, "/slack/events", encode(payload), JSON, **extra)


async def post_form(client: httpx.AsyncClient, path: str, form: dict[str, str],
                    **extra: str) -> httpx.Response:
    return await post_signed(client, path, urlencode(form).encode(), FORM, **extra)


def command_form(trigger_id: str = "13345224609.738474920.8088930838d88f008e0", *,
                 command: str = "/deploy", text: str = "api production",
                 team_id: str = "T0TEAM001") -> dict[str, str]:
    """A slash-command form as Slack posts it."""
    return {
        "token": "legacy-verification-token", "team_id": team_id, "team_domain": "example",
        "channel_id": "C0CHAN001", "channel_name": "ops", "user_id": "U0USER001",
        "user_name": "alice", "command": command, "text": text, "api_app_id": "A0APP001",
        "is_enterprise_install": "false",
        "response_url": "https://hooks.slack.com/commands/T0TEAM001/1/abc",
        "trigger_id": trigger_id,
    }


def block_actions_payload(trigger_id: str = "13345224609.738474920.aaaa", *,
                          team_id: str = "T0TEAM001") -> dict[str, Any]:
    return {
        "type": "block_actions", "team": {"id": team_id, "domain": "example"},
        "user": {"id": "U0USER001", "username": "alice", "team_id": team_id},
        "api_app_id": "A0APP001", "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": "1700000000.000100",
                      "channel_id": "C0CHAN001", "is_ephemeral": False},
        "trigger_id": trigger_id, "channel": {"id": "C0CHAN001", "name": "ops"},
        "response_url": "https://hooks.slack.com/actions/T0TEAM001/1/abc",
        "actions": [{"action_id": "approve", "block_id": "b1", "type": "button",
                     "value": "deploy-42", "action_ts": "1700000001.000200"}],
    }


def view_submission_payload(trigger_id: str = "13345224609.738474920.bbbb") -> dict[str, Any]:
    return {
        "type": "view_submission", "team": {"id": "T0TEAM001", "domain": "example"},
        "user": {"id": "U0USER001", "team_id": "T0TEAM001"}, "api_app_id": "A0APP001",
        "token": "legacy-verification-token", "trigger_id": trigger_id,
        "view": {"id": "V0VIEW001", "type": "modal", "callback_id": "deploy_form",
                 "state": {"values": {"b1": {"env": {"type": "plain_text_input",
                                                     "value": "production"}}}},
                 "hash": "1700000000.abc"},
    }


def shortcut_payload(trigger_id: str = "13345224609.738474920.cccc") -> dict[str, Any]:
    return {"type": "shortcut", "token": "legacy-verification-token",
            "action_ts": "1700000002.000300", "team": {"id": "T0TEAM001"},
            "user": {"id": "U0USER001", "team_id": "T0TEAM001"},
            "callback_id": "open_deploy", "trigger_id": trigger_id}


def view_closed_payload() -> dict[str, Any]:
    """`view_closed` carries no trigger_id (the job id comes from the payload's hash)."""
    return {"type": "view_closed", "team": {"id": "T0TEAM001"},
            "user": {"id": "U0USER001", "team_id": "T0TEAM001"}, "api_app_id": "A0APP001",
            "view": {"id": "V0VIEW002", "type": "modal", "callback_id": "deploy_form"},
            "is_cleared": False}


def interactive_form(payload: dict[str, Any]) -> dict[str, str]:
    return {"payload": json.dumps(payload, separators=(",", ":"))}


def stale_timestamp() -> int:
    return int(time.time()) - 301
