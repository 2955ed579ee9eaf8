"""A job whose name has no handler completes as "ignored", logged: never lost, never failed."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import redis
import structlog
from bullmq import Queue

from slackq.connection import bullmq_connection
from slackq.contract import job_options
from slackq.settings import Settings
from tests.waiting import wait_until
from worker.handlers import default_registry
from worker.runner import WorkerOptions, run_worker


async def test_unhandled_event_type_completes_as_ignored(
    settings: Settings, redis_client: redis.Redis
) -> None:
    queue = Queue(settings.queue_name, {"connection": bullmq_connection(settings.redis_url)})
    envelope = {"type": "event_callback", "event_id": "Ev0IGNORED1", "team_id": "T0TEAM001",
                "event": {"type": "reaction_added", "reaction": "tada"}}
    await queue.add("reaction_added", envelope, job_options("Ev0IGNORED1", settings))
    stop = asyncio.Event()
    merge = structlog.contextvars.merge_contextvars
    options = replace(WorkerOptions.from_settings(settings), grace_seconds=5)
    with structlog.testing.capture_logs(processors=[merge]) as logs:
        task = asyncio.create_task(run_worker(settings, default_registry(), options, stop))
        try:
            await wait_until(lambda: redis_client.zscore(
                "bull:slack-events:completed", "Ev0IGNORED1") is not None)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
            await queue.close()
    job = redis_client.hgetall("bull:slack-events:Ev0IGNORED1")
    assert '"ignored":true' in job["returnvalue"].replace(" ", "")
    assert redis_client.zcard("bull:slack-events:failed") == 0
    [ignored] = [entry for entry in logs if entry["event"] == "job_ignored"]
    assert ignored["job_id"] == "Ev0IGNORED1"
    assert ignored["team_id"] == "T0TEAM001"
    assert ignored["event_id"] == "Ev0IGNORED1"
