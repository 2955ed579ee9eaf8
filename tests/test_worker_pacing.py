"""Outbound pacing per channel and per team, on a real Redis as worker processes share it."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from bullmq import Queue

from harness.slack_standin import FakeSlack, rate_limited
from slackq.settings import Settings
from tests.waiting import wait_until
from tests.worker_app import app_registry
from tests.worker_helpers import add_mention, job_key, make_queue, state_key
from worker.errors import PacingLimited
from worker.limiter import Limiter, Limits
from worker.runner import WorkerOptions, start_worker


async def test_channel_slots_are_reserved_in_order(aclient: aioredis.Redis) -> None:
    limiter = Limiter(aclient, "bull", "q", Limits(per_channel=2, per_team=0))
    await limiter.acquire("T1", "C1", "job-a")  # free slot: goes now
    waits = []
    for job in ("job-b", "job-c"):
        with pytest.raises(PacingLimited) as caught:
            await limiter.acquire("T1", "C1", job)
        assert caught.value.scope == "channel"
        waits.append(caught.value.delay_seconds)
    assert 0.4 < waits[0] <= 0.5 and 0.9 < waits[1] <= 1.0  # one slot per 500 ms, in order
    # Asking again keeps the job's reservation instead of taking a later slot.
    with pytest.raises(PacingLimited) as again:
        await limiter.acquire("T1", "C1", "job-c")
    assert again.value.delay_seconds <= waits[1]
    await limiter.acquire("T1", "C2", "job-d")  # another channel is not affected
    await limiter.acquire("T2", "C1", "job-e")  # nor the same channel id in another team


async def test_team_limit_allows_a_burst_then_defers(aclient: aioredis.Redis) -> None:
    limiter = Limiter(aclient, "bull", "q", Limits(per_channel=0, per_team=2))
    await limiter.acquire("T1", "C1", "j1")
    await limiter.acquire("T1", "C2", "j2")
    with pytest.raises(PacingLimited) as caught:
        await limiter.acquire("T1", "C3", "j3")
    assert caught.value.scope == "team" and 0 < caught.value.delay_seconds <= 0.5
    await limiter.acquire("T2", "C3", "j4")


async def test_limits_can_be_turned_off(aclient: aioredis.Redis) -> None:
    limiter = Limiter(aclient, "bull", "q", Limits(per_channel=0, per_team=0))
    for n in range(20):
        await limiter.acquire("T1", "C1", f"j{n}")
    assert await aclient.keys("bull:slackq:*") == []


async def test_a_flooding_team_does_not_starve_another_team(
    settings: Settings, aclient: aioredis.Redis, fake_slack: FakeSlack
) -> None:
    queue: Queue = make_queue(settings)
    runtime = await start_worker(
        settings.model_copy(update={"worker_concurrency": 4}), app_registry(),
        replace(WorkerOptions.from_settings(settings), grace_seconds=3,
                limits=Limits(per_channel=1, per_team=4)),
    )
    try:
        flood = [f"Ev0FLOOD{n:03d}" for n in range(60)]
        for n, event_id in enumerate(flood):
            await add_mention(queue, event_id, team_id="T0NOISY", channel=f"C0NOISY{n % 6}")
        enqueued = time.monotonic()
        await add_mention(queue, "Ev0QUIET001", team_id="T0QUIET", channel="C0QUIET")

        async def quiet_replied() -> bool:
            posts = fake_slack.calls_to("chat.postMessage")
            return any(c.args["channel"] == "C0QUIET" for c in posts)

        await wait_until(quiet_replied, 8, "the quiet team's reply")
        latency = time.monotonic() - enqueued
        noisy_done = await aclient.zcard(state_key(settings, "completed"))
        print(f"quiet team's reply after {latency:.2f}s; noisy team done: {noisy_done - 1}/60")
        assert noisy_done - 1 < 30  # the noisy team is still being paced: the quiet one cut in

        # The noisy team got its pace, per channel and per team, and lost no attempt to it.
        await wait_until(lambda: _completed_at_least(aclient, settings, 12), 15, "noisy progress")
        posts = fake_slack.calls_to("chat.postMessage")
        noisy = [c for c in posts if c.args["channel"] != "C0QUIET"]
        for channel in {c.args["channel"] for c in noisy}:
            times = sorted(c.at for c in noisy if c.args["channel"] == channel)
            assert all(b - a >= 0.9 for a, b in itertools.pairwise(times)), channel
        times = sorted(c.at for c in noisy)
        for i in range(len(times) - 8):  # never more than burst + rate in any 1 s window
            assert times[i + 8] - times[i] >= 1.0
        first = flood[0]
        assert (await aclient.hgetall(job_key(settings, first)))["atm"] == "1"
        assert await aclient.zcard(state_key(settings, "failed")) == 0
    finally:
        await runtime.stop()
        await queue.close()


async def _completed_at_least(client: aioredis.Redis, settings: Settings, count: int) -> bool:
    return int(await client.zcard(state_key(settings, "completed"))) >= count


async def test_a_429_holds_the_channel_for_every_job_until_retry_after(
    settings: Settings, aclient: aioredis.Redis, fake_slack: FakeSlack
) -> None:
    fake_slack.script("chat.postMessage", rate_limited(2))
    queue: Queue = make_queue(settings)
    runtime = await start_worker(
        settings, app_registry(),
        replace(WorkerOptions.from_settings(settings), grace_seconds=3,
                limits=Limits(per_channel=5, per_team=0)),
    )
    try:
        for n in range(3):
            await add_mention(queue, f"Ev0HOLD000{n}", channel="C0HELD")
        await wait_until(lambda: _completed_at_least(aclient, settings, 3), 20, "3 jobs done")
        calls = fake_slack.calls_to("chat.postMessage")
        # One 429, then nothing in that channel until Retry-After has passed, then the 3 replies.
        assert len(calls) == 4
        assert all(later.at - calls[0].at >= 2.0 for later in calls[1:])
        assert await aclient.zcard(state_key(settings, "failed")) == 0
        # Slack refused the 429'd call: posting it again later is no duplicate.
        effects = f"{settings.queue_prefix}:slackq:{settings.queue_name}:effects"
        assert await aclient.get(f"{effects}:possible-duplicates") is None
    finally:
        await runtime.stop()
        await queue.close()
