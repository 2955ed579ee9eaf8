"""Shared by the dashboard's tests: logins, settings, and seeding jobs through the real webhook."""

from __future__ import annotations

import asyncio
from typing import Any

from bullmq import Queue, Worker

from slackq.connection import bullmq_connection
from slackq.settings import Settings
from tests.slack_requests import BOT_TOKEN, SIGNING_SECRET, app_mention_envelope
from tests.waiting import wait_until
from tests.webhook_client import post_event, webhook

ADMIN = ("admin", "admin-pass-0123456789")
READONLY = ("readonly", "readonly-pass-0123456789")
XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = "<script>alert(2)</script>"


def admin_settings(redis_url: str, slack_api_url: str = "http://127.0.0.1:9/api/",
                   **extra: Any) -> Settings:
    return Settings(redis_url=redis_url, slack_signing_secret=SIGNING_SECRET,
                    slack_bot_token=BOT_TOKEN, slack_api_url=slack_api_url,
                    admin_password=ADMIN[1], admin_readonly_password=READONLY[1],
                    log_format="console", **extra)


def mention(event_id: str, channel: str, text: str, team: str = "T0TEAM001",
            ts: str = "1700000000.000100") -> dict[str, Any]:
    return app_mention_envelope(event_id, team_id=team, channel=channel, text=text, ts=ts)


async def post_mentions(settings: Settings, envelopes: list[dict[str, Any]]) -> None:
    """Store jobs as Slack would: signed requests to the web app (which also indexes them)."""
    async with webhook(settings) as client:
        for envelope in envelopes:
            assert (await post_event(client, envelope)).status_code == 200


async def settle_with_failures(settings: Settings, failing_word: str, expected: int) -> None:
    """Run an in-process BullMQ worker that fails every job whose text holds `failing_word`
    (its reason names the job's text) until `expected` jobs have finished."""

    async def process(job: Any, _token: str) -> str:
        text = job.data["event"]["text"]
        if failing_word in text:
            raise RuntimeError(f"failed on purpose: {text}")
        return "ok"

    queue = Queue(settings.queue_name, {"connection": bullmq_connection(settings.redis_url)})
    worker = Worker(settings.queue_name, process,
                    {"connection": bullmq_connection(settings.redis_url), "autorun": False})
    running = asyncio.create_task(worker.run())
    try:
        async def finished() -> bool:
            counts = await queue.getJobCounts("failed", "completed")
            return sum(counts.values()) >= expected

        await wait_until(finished, what=f"{expected} jobs finished")
    finally:
        await worker.close()
        await asyncio.gather(running, return_exceptions=True)
        await queue.close()
