"""The effect lease: one run of a job at a time may call Slack for it (real Redis, in-process
worker, the Slack stand-in holding its replies)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from bullmq import Queue
from structlog.testing import capture_logs

from harness.slack_standin import FakeSlack
from slackq.settings import Settings
from tests.held_slack import HeldSlack
from tests.waiting import wait_until
from tests.worker_app import app_registry
from tests.worker_helpers import add_mention, job_key, job_state
from worker.effects import EffectLeased, EffectLog, EffectUnsettled, JobGone
from worker.limiter import Limits
from worker.registry import HandlerRegistry, JobContext
from worker.runner import WorkerOptions, start_worker


@pytest.fixture
def held() -> Iterator[HeldSlack]:
    slack = HeldSlack().start()
    yield slack
    slack.stop()


async def test_the_claim_script_grants_one_run_at_a_time(aclient: aioredis.Redis) -> None:
    log = EffectLog(aclient, "bull", "q", lease_ms=300)
    with pytest.raises(JobGone):  # no job hash: nothing is created for it
        await log.claim("J1", "reply", "run-a")
    assert await aclient.exists("bull:q:J1") == 0
    for job_id in ("J1", "J2"):
        await aclient.hset(f"bull:q:{job_id}", "name", "app_mention")  # the jobs' BullMQ hashes
    assert (await log.claim("J1", "reply", "run-a")).duplicate is False
    with pytest.raises(EffectLeased):  # a live lease held by another run
        await log.claim("J1", "reply", "run-b")
    assert (await log.claim("J1", "reply", "run-a")).recorded is None  # its own: granted again

    await aclient.delete(log.lease_key("J1"))  # run-a's lease ended without a record
    with pytest.raises(EffectUnsettled) as waited:  # run-a may hold Slack's answer: wait once
        await log.claim("J1", "reply", "run-b")
    assert waited.value.delay_seconds == pytest.approx(0.3)
    claim = await log.claim("J1", "reply", "run-b")  # waited: run-a is taken to be dead
    assert claim.duplicate is True
    assert await log.possible_duplicates() == 1

    await log.settle("J1", "run-b", {"reply": '{"ts":"1.2"}'}, release=True)
    assert await aclient.exists(log.lease_key("J1")) == 0
    assert (await log.claim("J1", "reply", "run-c")).recorded == {"ts": "1.2"}

    # Slack refused the call: nothing for a later run to wait for, no duplicate counted.
    await log.claim("J2", "reply", "run-a")
    await log.abandon("J2", "reply", "run-a", refused=True)
    await log.settle("J2", "run-a", {}, release=True)
    assert (await log.claim("J2", "reply", "run-b")).duplicate is False
    assert await log.possible_duplicates() == 1
    # Slack timed out: it may have posted, but no answer will come to wait for.
    await log.abandon("J2", "reply", "run-b", refused=False)
    await log.settle("J2", "run-b", {}, release=True)
    assert (await log.claim("J2", "reply", "run-c")).duplicate is True
    assert await log.possible_duplicates() == 2


async def test_a_lease_is_extended_with_the_job_lock_and_ends_with_the_run(
    settings: Settings, held: HeldSlack, queue: Queue, aclient: aioredis.Redis,
) -> None:
    worker_settings = settings.model_copy(update={"slack_api_url": held.base_url})
    options = replace(WorkerOptions.from_settings(worker_settings), lock_duration_ms=1_000,
                      limits=Limits(0, 0), grace_seconds=3)
    runtime = await start_worker(worker_settings, app_registry(), options)
    try:
        await add_mention(queue, "Ev0LEASE001")
        await wait_until(lambda: held.posts_arrived() == 1, 10, "the call reached Slack")
        lease = f"{settings.queue_prefix}:slackq:{settings.queue_name}:effects:Ev0LEASE001:lease"
        # For three lock durations into the call the lease never lapses: renewed with the lock.
        assert await _held_throughout(aclient, lease, seconds=3.0)
        held.release()
        await wait_until(lambda: _state_is(aclient, settings, "Ev0LEASE001", "completed"), 10,
                         "job completed")
        assert await aclient.exists(lease) == 0
    finally:
        await runtime.stop()


async def test_a_second_live_run_after_a_lock_loss_does_not_call_slack(
    settings: Settings, held: HeldSlack, queue: Queue, aclient: aioredis.Redis,
) -> None:
    worker_settings = settings.model_copy(update={"slack_api_url": held.base_url,
                                                  "worker_concurrency": 1})
    options = replace(WorkerOptions.from_settings(worker_settings), lock_duration_ms=6_000,
                      stalled_interval_ms=200, limits=Limits(0, 0), grace_seconds=3)
    first = await start_worker(worker_settings, app_registry(), options)
    second = None
    try:
        await add_mention(queue, "Ev0TWICE001")
        await wait_until(lambda: held.posts_arrived() == 1, 10, "the first run calls Slack")
        with capture_logs() as logs:
            second = await start_worker(worker_settings, app_registry(), options)
            # The first run loses its lock (as after an event-loop stall): the stalled check
            # hands the job to the second worker while the first is still waiting for Slack.
            await aclient.delete(f"{job_key(settings, 'Ev0TWICE001')}:lock")
            await wait_until(lambda: any(e["event"] == "job_deferred" for e in logs), 10,
                             "the second run deferred")
            held.release()
            await wait_until(lambda: _state_is(aclient, settings, "Ev0TWICE001", "completed"),
                             20, "job completed")
        deferred = [e for e in logs if e["event"] == "job_deferred"]
        assert deferred[0]["reason"] == "effect leased by another run"
        assert any(e["event"] == "slack_effect_skipped" for e in logs)
        assert held.posts_per_channel() == {"C0CHAN001": 1}
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


async def _held_throughout(client: aioredis.Redis, key: str, seconds: float) -> bool:
    """Whether `key` exists at every check for `seconds` (time must pass: that is the test)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if int(await client.pttl(key)) <= 0:
            return False
        await asyncio.sleep(0.05)
    return True


async def _state_is(client: aioredis.Redis, settings: Settings, job_id: str, state: str) -> bool:
    return await job_state(client, settings, job_id) == state


async def test_a_paced_recorded_call_costs_two_round_trips_per_job(
    settings: Settings, fake_slack: FakeSlack, queue: Queue, aclient: aioredis.Redis,
) -> None:
    """Pacing check + effect claim in one script call; the record, the lease's end and the
    completion in one MULTI (issue 18's budget: two round trips per job, fetch-next included)."""
    jobs = 30
    for n in range(jobs):  # one team and channel each: no job waits for the pace
        await add_mention(queue, f"Ev0TRIPS{n:03d}", channel=f"C0TRIP{n:03d}",
                          team_id=f"T0TRIP{n:03d}")
    await aclient.config_resetstat()
    runtime = await start_worker(settings, app_registry(), replace(
        WorkerOptions.from_settings(settings), grace_seconds=3))  # default pacing: on
    try:
        await wait_until(lambda: _all_completed(aclient, settings, jobs), 20, "all completed")
    finally:
        await runtime.stop()
    calls = {name.removeprefix("cmdstat_"): int(stats["calls"])
             for name, stats in (await aclient.info("commandstats")).items()}
    assert len(fake_slack.calls_to("chat.postMessage")) == jobs
    # One transaction per job, its completion, carrying the record and the lease's end by SHA,
    # never the script's text (sent again by the first completions, which load BullMQ's script
    # into the fresh Redis: at most one per slot, as the slots' first completions race).
    assert calls["multi"] == calls["exec"]
    assert "eval" not in calls
    resent = calls["multi"] - jobs
    assert 0 <= resent <= settings.worker_concurrency
    # The claim (with the pacing check), the settle and the completion's moveToFinished per
    # job; besides them a few fetches, lock renewals and stalled checks, no fourth per job.
    assert 3 * jobs <= calls["evalsha"] <= 3 * jobs + 2 * resent + 20


async def test_a_settle_refused_for_a_missing_script_is_sent_again_alone(
    settings: Settings, held: HeldSlack, queue: Queue, aclient: aioredis.Redis,
) -> None:
    """Redis lost its scripts (as after a restart) while a job was calling Slack. Inside the
    completion's MULTI the settle's EVALSHA is then refused (NOSCRIPT) while BullMQ's
    moveToFinished, loaded again by the port, completes the job: the settle must follow on its
    own, or the record would be missing and the lease left behind."""
    worker_settings = settings.model_copy(update={"slack_api_url": held.base_url})
    options = replace(WorkerOptions.from_settings(worker_settings), limits=Limits(0, 0),
                      grace_seconds=3)
    runtime = await start_worker(worker_settings, app_registry(), options)
    try:
        with capture_logs() as logs:
            await add_mention(queue, "Ev0NOSCRIPT1")
            await wait_until(lambda: held.posts_arrived() == 1, 10, "the call reached Slack")
            await aclient.script_flush()
            held.release()
            await wait_until(lambda: _state_is(aclient, settings, "Ev0NOSCRIPT1", "completed"),
                             10, "job completed")
        lease = f"{settings.queue_prefix}:slackq:{settings.queue_name}:effects:Ev0NOSCRIPT1:lease"
        assert await aclient.exists(lease) == 0
        assert await aclient.hget(job_key(settings, "Ev0NOSCRIPT1"), "slackq:done:reply")
        assert any(e["event"] == "effect_record_resent" for e in logs)
    finally:
        await runtime.stop()


async def _all_completed(client: aioredis.Redis, settings: Settings, count: int) -> bool:
    return int(await client.zcard(f"{settings.queue_prefix}:{settings.queue_name}:completed")) \
        == count


async def test_a_handler_busy_after_slacks_answer_gets_its_record_written_meanwhile(
    settings: Settings, fake_slack: FakeSlack, queue: Queue, aclient: aioredis.Redis,
) -> None:
    """The record waits for the completion only `RECORD_DELAY_SECONDS`: a handler still busy
    after that has it written on its own round trip, before the job ends."""
    release = asyncio.Event()
    registry = HandlerRegistry()

    @registry.register("app_mention")
    async def post_then_wait(ctx: JobContext) -> None:
        await ctx.slack.call("chat.postMessage", effect="reply", channel="C0BUSY001", text="hi")
        await release.wait()

    runtime = await start_worker(settings, registry, replace(
        WorkerOptions.from_settings(settings), limits=Limits(0, 0), grace_seconds=3))
    try:
        await add_mention(queue, "Ev0BUSY0001")
        key = job_key(settings, "Ev0BUSY0001")
        await wait_until(lambda: _recorded(aclient, key), 10, "record written while busy")
        assert await job_state(aclient, settings, "Ev0BUSY0001") == "active"
        release.set()
        await wait_until(lambda: _state_is(aclient, settings, "Ev0BUSY0001", "completed"), 10,
                         "job completed")
    finally:
        release.set()
        await runtime.stop()


async def _recorded(client: aioredis.Redis, key: str) -> bool:
    return bool(await client.hget(key, "slackq:done:reply"))
