"""One bad request never fails the requests it shares a pipelined batch with.

A number that overflows a float (`1e999`) parses to `inf` in Python, which BullMQ's job data
(`json.dumps(allow_nan=False)`) cannot hold. Such a request gets its own 400; the good requests
sent at the same moment (the batcher puts them in the same pipeline) are all stored and get 200.
The batcher also isolates a job it cannot prepare for any other reason (defence in depth).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis
from bullmq import Queue

from producers.batching import AddBatcher
from producers.errors import JobNotStorable
from slackq.bullmq_seam import queue_client
from slackq.connection import PRODUCER, redis_client
from slackq.embedded import RedisProcess
from slackq.settings import Settings
from tests.slack_requests import app_mention_envelope, encode, signed_headers
from tests.webhook_client import FORM, JSON, block_actions_payload, command_form, webhook

OVERFLOWING = ["1e999", "-1e400", "1E+999", "123456789e999"]


@pytest.fixture
async def client(webhook_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with webhook(webhook_settings) as client:
        yield client


def bad_event(event_id: str, number: str) -> bytes:
    body = encode(app_mention_envelope(event_id))
    return body.replace(b'"event_ts"', b'"score":' + number.encode() + b',"event_ts"')


def bad_interaction(trigger_id: str, number: str) -> bytes:
    payload = json.dumps(block_actions_payload(trigger_id), separators=(",", ":"))
    payload = payload.replace('"actions"', f'"score":{number},"actions"')
    return urlencode({"payload": payload}).encode()


def good_interaction(trigger_id: str) -> bytes:
    payload = json.dumps(block_actions_payload(trigger_id), separators=(",", ":"))
    return urlencode({"payload": payload}).encode()


def requests(rounds: int) -> list[tuple[str, str, bytes, str, int, str | None]]:
    """(path, content type, body, job id, expected status, key that must exist) per request:
    per round, a good event, command and interaction, and a bad event (an overflowing number),
    interaction (the same) and command (a trigger_id Node BullMQ would refuse as a job id)."""
    out: list[tuple[str, str, bytes, str, int, str | None]] = []
    for i in range(rounds):
        number = OVERFLOWING[i % len(OVERFLOWING)]
        out += [
            ("/slack/events", JSON, encode(app_mention_envelope(f"Ev0GOOD{i:04}")), "", 200,
             f"Ev0GOOD{i:04}"),
            ("/slack/commands", FORM, urlencode(command_form(f"1.2.good{i}")).encode(), "", 200,
             f"command-1.2.good{i}"),
            ("/slack/interactivity", FORM, good_interaction(f"1.2.igood{i}"), "", 200,
             f"interactive-1.2.igood{i}"),
            ("/slack/events", JSON, bad_event(f"Ev0BAD{i:04}", number), "", 400, None),
            ("/slack/interactivity", FORM, bad_interaction(f"1.2.ibad{i}", number), "", 400,
             None),
            ("/slack/commands", FORM, urlencode(command_form(f"1.2:bad{i}")).encode(), "", 400,
             None),
        ]
    return out


async def test_overflowing_numbers_get_400_and_concurrent_good_requests_are_stored(
    client: httpx.AsyncClient, queue_redis: redis.Redis,
) -> None:
    sent = requests(rounds=12)  # 72 requests at once: 36 good, 36 bad

    async def post(path: str, content_type: str, body: bytes) -> httpx.Response:
        return await client.post(path, content=body,
                                 headers=signed_headers(body, content_type=content_type))

    responses = await asyncio.gather(*(post(p, ct, b) for p, ct, b, *_ in sent))
    for (path, _, _, _, status, key), response in zip(sent, responses, strict=True):
        assert response.status_code == status, (path, response.text)
        if key is None:
            assert response.json()["ok"] is False
            if path != "/slack/commands":
                assert "overflows a float" in response.json()["detail"]
        else:
            assert queue_redis.exists(f"bull:slack-events:{key}"), key
    assert len(queue_redis.lrange("bull:slack-events:wait", 0, -1)) == 36


@pytest.fixture
async def batcher(module_redis: RedisProcess) -> AsyncIterator[AddBatcher]:
    with redis.Redis.from_url(module_redis.url) as plain:
        plain.flushall()
    queue = Queue("isolation", {"connection": redis_client(module_redis.url, PRODUCER)})
    try:
        yield AddBatcher(queue)
    finally:
        await queue.close()


async def test_a_job_the_batcher_cannot_prepare_fails_alone(batcher: AddBatcher) -> None:
    """Jobs that slip past the body checks (here built in Python) fail alone, in one batch."""
    bad_values: list[Any] = [float("inf"), float("nan"), object(), {1j: 1}]
    jobs: list[tuple[str, dict[str, Any]]] = []
    for i in range(40):
        value = bad_values[i // 10] if i % 10 == 0 else i
        jobs.append((f"job-{i}", {"value": value}))
    async with asyncio.timeout(20):  # a poisoned batch would leave its waiters waiting
        results = await asyncio.gather(
            *(batcher.add("n", data, {"jobId": job_id}) for job_id, data in jobs),
            return_exceptions=True)
    for (job_id, data), result in zip(jobs, results, strict=True):
        if isinstance(data["value"], int):
            assert result == job_id
        else:
            assert isinstance(result, JobNotStorable), result
            assert result.status == 400
    client = queue_client(batcher.queue)
    assert await client.llen("bull:isolation:wait") == 36
