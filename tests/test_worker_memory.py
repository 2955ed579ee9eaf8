"""Redis memory under failing jobs stays within docs/operating.md's bound (real Redis, the
Slack stand-in answering `invalid_auth` to every post: a revoked bot token)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from bullmq import Queue

from harness.slack_standin import FakeSlack, slack_error
from slackq.contract import JobOptions
from slackq.settings import Settings
from tests.slack_requests import app_mention_envelope
from tests.waiting import wait_until
from tests.worker_app import app_registry
from tests.worker_helpers import state_key
from worker.limiter import Limits
from worker.runner import WorkerOptions, start_worker

# docs/operating.md, "Redis sizing": what failures may hold, besides BullMQ's event stream
# (capped at 10,000 entries, measured on its own here).
FAILED_JOB_BYTES = 6_144  # a failed app_mention job with one traceback (measured ~5 KB)
DEDUP_KEY_BYTES = 256  # one per event for JOB_DEDUPLICATION_TTL_MS (measured ~120 B)
SERVER_SLACK_BYTES = 500_000  # client buffers and allocator noise around the measurement


@pytest.mark.slow
async def test_jobs_failing_on_a_revoked_token_keep_redis_under_the_documented_bound(
    settings: Settings, fake_slack: FakeSlack, queue: Queue, aclient: aioredis.Redis,
) -> None:
    jobs, kept = 600, 50
    producer = settings.model_copy(update={"job_keep_failed_count": kept})
    options = JobOptions.from_settings(producer)
    fake_slack.script("chat.postMessage", *(slack_error("invalid_auth") for _ in range(jobs + 1)))
    runtime = await start_worker(settings, app_registry(), replace(
        WorkerOptions.from_settings(settings), limits=Limits(0, 0), grace_seconds=3))
    try:
        # A first job loads BullMQ's scripts into Redis (~1 MB of Lua): not per-event memory.
        await queue.add("app_mention", app_mention_envelope("Ev0WARMUP"),
                        options.for_job("Ev0WARMUP"))
        await wait_until(lambda: len(fake_slack.calls_to("chat.postMessage")) == 1, 20, "warm-up")
        await wait_until(lambda: _zcard_is(aclient, state_key(settings, "failed"), 1), 20,
                         "warm-up failed")
        baseline = int((await aclient.info("memory"))["used_memory"])
        for n in range(jobs):
            event_id = f"Ev0REVOKED{n:05d}"
            await queue.add("app_mention", app_mention_envelope(event_id, channel=f"C{n:06d}"),
                            options.for_job(event_id))

        async def all_failed() -> bool:
            return len(fake_slack.calls_to("chat.postMessage")) > jobs and (
                await aclient.llen(state_key(settings, "wait"))
                + await aclient.llen(state_key(settings, "active")) == 0)

        await wait_until(all_failed, 120, "every job failed")
    finally:
        await runtime.stop()
    stream = int(await aclient.memory_usage(state_key(settings, "events"), samples=0) or 0)
    grown = int((await aclient.info("memory"))["used_memory"]) - baseline - stream
    failed = await aclient.zcard(state_key(settings, "failed"))
    bound = kept * FAILED_JOB_BYTES + jobs * DEDUP_KEY_BYTES + SERVER_SLACK_BYTES
    print(f"{jobs} jobs failed on invalid_auth, {failed} kept: Redis grew {grown / 1e6:.2f} MB "
          f"besides the event stream ({stream / 1e6:.2f} MB; bound {bound / 1e6:.2f} MB)")
    assert failed <= kept + 1  # BullMQ trims the set as each job fails
    assert grown < bound


async def _zcard_is(client: aioredis.Redis, key: str, count: int) -> bool:
    return int(await client.zcard(key)) == count
