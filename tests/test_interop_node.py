"""Node BullMQ 6.7.0 and slackq on the same queue, both directions, with real processes.

slackq's producer (the real webhook app, in process) and worker (`run_worker`, in process) talk to
Node scripts from tests/node/interop/ through a fresh redis-server per test; Slack is the loopback
stand-in. Retries are followed with `drive_retries`: the first backoff is waited for real, later
ones are promoted with BullMQ's own `promote` once their delay is recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from bullmq import Job, Queue

from harness.slack_standin import FakeSlack, rate_limited, server_error, slack_error
from slackq.contract import job_options
from slackq.settings import Settings
from tests.interop import (
    RetryTrace,
    StoredJob,
    drive_retries,
    node_config,
    node_script,
    node_skip_reason,
    stored_job,
    until,
)
from tests.prerequisites import requires
from tests.slack_requests import BOT_TOKEN, app_mention_envelope
from tests.webhook_client import (
    block_actions_payload,
    command_form,
    interactive_form,
    post_form,
    webhook,
)
from tests.webhook_client import post_event as post_json_event
from worker.handlers import default_registry
from worker.limiter import Limits
from worker.runner import WorkerOptions, run_worker

pytestmark = [
    pytest.mark.interop,
    requires("Node BullMQ interop", node_skip_reason()),
]

DAY_SECONDS = 86_400


@pytest.fixture
async def aredis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def bull_queue(settings: Settings) -> AsyncIterator[Queue]:
    """The Python port's Queue on slackq's queue: only used to promote retries and read jobs."""
    queue = Queue(settings.queue_name, {"connection": settings.redis_url,
                                        "prefix": settings.queue_prefix})
    yield queue
    await queue.close()


async def post_event(client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    response = await post_json_event(client, payload)
    assert response.status_code == 200, response.text


@dataclass(frozen=True)
class SlackRequest:
    """One request kind through the webhook, and the job it must become."""

    path: str
    body: dict[str, Any]
    name: str
    job_id: str
    data: dict[str, Any]

    async def post(self, client: httpx.AsyncClient) -> None:
        if self.path == "/slack/events":
            response = await post_json_event(client, self.body)
        else:
            response = await post_form(client, self.path, self.body)
        assert response.status_code == 200, response.text


def without_token(payload: dict[str, Any]) -> dict[str, Any]:
    """The job data slackq stores: Slack's legacy verification `token` is dropped."""
    return {key: value for key, value in payload.items() if key != "token"}


TRIGGER = "13345224609.738474920.8088930838d88f008e0"
REQUEST_KINDS = {
    "event": SlackRequest("/slack/events", app_mention_envelope("Ev0INTEROP01"), "app_mention",
                          "Ev0INTEROP01", without_token(app_mention_envelope("Ev0INTEROP01"))),
    "command": SlackRequest("/slack/commands", command_form(TRIGGER), "command:/deploy",
                            f"command-{TRIGGER}", without_token(command_form(TRIGGER))),
    "interactive": SlackRequest(
        "/slack/interactivity", interactive_form(block_actions_payload(TRIGGER)),
        "interactive:block_actions", f"interactive-{TRIGGER}",
        without_token(block_actions_payload(TRIGGER))),
}


@asynccontextmanager
async def slackq_worker(settings: Settings) -> AsyncIterator[None]:
    """slackq's worker (default handler registry) in process; stopped like SIGTERM would."""
    stop = asyncio.Event()
    # Pacing off: a paced job goes to `delayed` without an attempt, and `drive_retries` reads
    # every delay as a retry (pacing has its own tests, tests/test_worker_pacing.py).
    options = replace(WorkerOptions.from_settings(settings), grace_seconds=5.0,
                      limits=Limits(per_channel=0, per_team=0))
    task = asyncio.create_task(run_worker(settings, default_registry(), options, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def config(settings: Settings, **extra: Any) -> dict[str, Any]:
    return node_config(settings.redis_url, settings.queue_name, settings.queue_prefix, **extra)


def expected_delays(opts: dict[str, Any]) -> list[tuple[int, int]]:
    """The (min, max) delay of each retry the job's own backoff option asks for.

    BullMQ's exponential backoff is `round(2 ** (attemptsMade - 1) * delay)`; with a `jitter` j
    (Node only honours it) the delay is drawn from [(1 - j) * that, that].
    """
    backoff = opts["backoff"]
    assert backoff["type"] == "exponential", backoff
    jitter = float(backoff.get("jitter", 0))
    bounds = []
    for attempt in range(1, opts["attempts"]):
        top = round(2 ** (attempt - 1) * backoff["delay"])
        bounds.append((int(top * (1 - jitter)), top))
    return bounds


def assert_slackq_backoff(trace: RetryTrace, opts: dict[str, Any]) -> None:
    bounds = expected_delays(opts)
    assert len(trace.delays_ms) == len(bounds) == opts["attempts"] - 1
    for delay, (low, high) in zip(trace.delays_ms, bounds, strict=True):
        assert low <= delay <= high, (trace.delays_ms, bounds)
    # The first retry really waited its delay (promotion only shortened the later ones).
    assert trace.first_retry_waited_ms >= trace.delays_ms[0]


async def assert_failed_and_kept_24h(aredis: aioredis.Redis, settings: Settings,
                                     trace: RetryTrace, opts: dict[str, Any]) -> None:
    job = trace.final
    assert job.state == "failed"
    assert job.attempts_made == opts["attempts"]
    assert job.opts["removeOnFail"] == {"age": DAY_SECONDS, "count": 10_000}
    # The stored options are still the producer's (slackq's worker computes Node's jittered
    # delay itself but must not rewrite `backoff` for the next consumer).
    assert {key: job.opts[key] for key in ("attempts", "backoff", "removeOnComplete")} == {
        key: opts[key] for key in ("attempts", "backoff", "removeOnComplete")}
    # Retention by age is applied by BullMQ when later jobs finish; nothing expires the hash.
    key = f"{settings.queue_prefix}:{settings.queue_name}:{job.id}"
    assert await aredis.ttl(key) == -1


async def test_node_worker_sees_the_webhooks_jobs_as_slackq_enqueued_them(
    settings: Settings, aredis: aioredis.Redis, bull_queue: Queue
) -> None:
    """Every request kind (event, slash command, interaction) in one Node worker run."""
    requests = list(REQUEST_KINDS.values())
    worker_config = config(settings, mode="complete", limit=len(requests))
    async with node_script("worker", worker_config) as node:
        async with webhook(settings) as client:
            for request in requests:
                await request.post(client)
        messages = await node.finish()

    seen = {m["id"]: m for m in messages if m["event"] == "process"}
    assert sorted(seen) == sorted(request.job_id for request in requests)
    for request in requests:
        job, expected = seen[request.job_id], job_options(request.job_id, settings)
        assert (job["name"], job["data"], job["attemptsMade"]) == (request.name, request.data, 0)
        for option in ("attempts", "backoff", "removeOnComplete", "removeOnFail",
                       "stackTraceLimit", "deduplication"):
            assert job["opts"][option] == expected[option], (request.name, option)
        # Node's completion is readable by the Python port as well.
        done = await Job.fromId(bull_queue, request.job_id)
        assert done is not None
        assert done.returnvalue == {"handledBy": "node", "id": request.job_id}
        assert (await stored_job(aredis, settings.queue_prefix, settings.queue_name,
                                 request.job_id)).state == "completed"


async def test_slackq_worker_replies_to_a_job_node_enqueued_in_the_documented_shape(
    settings: Settings, aredis: aioredis.Redis, fake_slack: FakeSlack
) -> None:
    envelope = app_mention_envelope("Ev0INTEROP02", thread_ts="1700000000.000042")
    opts = job_options("Ev0INTEROP02", settings)
    jobs = [{"name": "app_mention", "data": envelope, "opts": opts}]
    async with node_script("producer", config(settings, jobs=jobs)) as node:
        messages = await node.finish()
    assert [m["id"] for m in messages if m["event"] == "added"] == ["Ev0INTEROP02"]

    async with slackq_worker(settings):
        job = await until(lambda: _finished(aredis, settings, "Ev0INTEROP02"), 15,
                          "the Node job to finish")
    [call] = fake_slack.calls_to("chat.postMessage")
    assert call.args["channel"] == "C0CHAN001"
    assert call.args["thread_ts"] == "1700000000.000042"
    assert call.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    assert job.state == "completed"
    assert job.returnvalue["channel"] == "C0CHAN001"


async def test_node_worker_failing_a_slackq_job_retries_with_slackq_backoff(
    settings: Settings, aredis: aioredis.Redis, bull_queue: Queue
) -> None:
    opts = job_options("Ev0INTEROP03", settings)
    worker_config = config(settings, mode="fail", failMessage="node says no", limit=1)
    async with node_script("worker", worker_config) as node:
        async with webhook(settings) as client:
            await post_event(client, app_mention_envelope("Ev0INTEROP03"))
        trace = await drive_retries(aredis, settings.queue_prefix, bull_queue, "Ev0INTEROP03")
        messages = await node.finish()

    assert_slackq_backoff(trace, opts)
    await assert_failed_and_kept_24h(aredis, settings, trace, opts)
    assert trace.final.failed_reason == "node says no"
    assert [m["attemptsMade"] for m in messages if m["event"] == "process"] == [0, 1, 2, 3, 4]


async def test_slackq_worker_failing_a_node_job_retries_with_its_backoff(
    settings: Settings, aredis: aioredis.Redis, bull_queue: Queue, fake_slack: FakeSlack
) -> None:
    opts = job_options("Ev0INTEROP04", settings)
    fake_slack.script("chat.postMessage", *[server_error(500) for _ in range(opts["attempts"])])
    jobs = [{"name": "app_mention", "data": app_mention_envelope("Ev0INTEROP04"), "opts": opts}]
    async with node_script("producer", config(settings, jobs=jobs)) as node:
        await node.finish()

    async with slackq_worker(settings):
        trace = await drive_retries(aredis, settings.queue_prefix, bull_queue, "Ev0INTEROP04")

    assert_slackq_backoff(trace, opts)
    await assert_failed_and_kept_24h(aredis, settings, trace, opts)
    assert "fatal_error" in str(trace.final.failed_reason)
    assert len(fake_slack.calls_to("chat.postMessage")) == opts["attempts"]


async def test_node_queue_events_sees_slackq_completions_and_failures(
    settings: Settings, fake_slack: FakeSlack
) -> None:
    # A permanent Slack error fails the second job at once (UnrecoverableError); retries are
    # covered by the failure tests above.
    async with node_script("events", config(settings, limit=2)) as events:
        await events.wait_for("ready")
        async with webhook(settings) as client, slackq_worker(settings):
            await post_event(client, app_mention_envelope("Ev0INTEROP05"))
            await events.wait_for("completed")
            fake_slack.script("chat.postMessage", slack_error("channel_not_found"))
            await post_event(client, app_mention_envelope("Ev0INTEROP06", ts="1700000002.000100"))
            messages = await events.finish()

    [completed] = [m for m in messages if m["event"] == "completed"]
    assert completed["jobId"] == "Ev0INTEROP05"
    assert completed["returnvalue"]["channel"] == "C0CHAN001"
    [failed] = [m for m in messages if m["event"] == "failed"]
    assert failed["jobId"] == "Ev0INTEROP06"
    assert failed["failedReason"].startswith("channel_not_found")  # as the contract says


async def _finished(aredis: aioredis.Redis, settings: Settings, job_id: str) -> Any:
    job = await stored_job(aredis, settings.queue_prefix, settings.queue_name, job_id)
    return job if job.state in ("completed", "failed") else None


@pytest.mark.parametrize("finisher", ["node", "slackq"])
async def test_failed_jobs_are_kept_24_hours_and_no_longer(
    finisher: str, settings: Settings, aredis: aioredis.Redis, bull_queue: Queue,
    fake_slack: FakeSlack,
) -> None:
    """`removeOnFail: {age: 86400}` is applied by whichever side fails the next job."""
    base = f"{settings.queue_prefix}:{settings.queue_name}"
    unrecoverable = config(settings, mode="unrecoverable", failMessage="no retry", limit=2)
    async with node_script("worker", unrecoverable) as node:
        async with webhook(settings) as client:
            await post_event(client, app_mention_envelope("Ev0AGE25H"))
            await post_event(client, app_mention_envelope("Ev0AGE23H"))
        await node.finish()
    # Make them 25 h and 23 h old: the failed set's score is the job's finishedOn.
    now_ms = int(time.time() * 1000)
    for job_id, hours in (("Ev0AGE25H", 25), ("Ev0AGE23H", 23)):
        finished_on = now_ms - hours * 3_600_000
        await aredis.zadd(f"{base}:failed", {job_id: finished_on})
        await aredis.hset(f"{base}:{job_id}", "finishedOn", finished_on)

    if finisher == "node":
        async with node_script("worker", {**unrecoverable, "limit": 1}) as node:
            async with webhook(settings) as client:
                await post_event(client, app_mention_envelope("Ev0AGENOW"))
            await node.finish()
    else:
        # A permanent Slack error: slackq's worker fails the job at once (UnrecoverableError).
        fake_slack.script("chat.postMessage", slack_error("channel_not_found"))
        jobs = [{"name": "app_mention", "data": app_mention_envelope("Ev0AGENOW"),
                 "opts": job_options("Ev0AGENOW", settings)}]
        async with node_script("producer", config(settings, jobs=jobs)) as node:
            await node.finish()
        async with slackq_worker(settings):
            await until(lambda: _finished(aredis, settings, "Ev0AGENOW"), 15, "the failure")

    async def state(job_id: str) -> str:
        return (await stored_job(aredis, settings.queue_prefix, settings.queue_name, job_id)).state

    assert await state("Ev0AGENOW") == "failed"
    assert await state("Ev0AGE23H") == "failed"
    assert await state("Ev0AGE25H") == "missing"


async def test_redeliveries_are_deduplicated_across_implementations(
    settings: Settings, aredis: aioredis.Redis
) -> None:
    """The same Slack delivery added by slackq and by Node (either order) is stored once."""
    base = f"{settings.queue_prefix}:{settings.queue_name}"
    via_slackq = app_mention_envelope("Ev0DEDUP01", text="first, via slackq")
    via_node = app_mention_envelope("Ev0DEDUP02", text="first, via node")

    def redelivered(envelope: dict[str, Any]) -> dict[str, Any]:
        return {**envelope, "event": {**envelope["event"], "text": "redelivered"}}

    jobs = [{"name": "app_mention", "data": data, "opts": job_options(data["event_id"], settings)}
            for data in (redelivered(via_slackq), via_node)]
    async with webhook(settings) as client:
        await post_event(client, via_slackq)
        async with node_script("producer", config(settings, jobs=jobs)) as node:
            added = [m for m in await node.finish() if m["event"] == "added"]
        await post_event(client, redelivered(via_node))

    assert [m["id"] for m in added] == ["Ev0DEDUP01", "Ev0DEDUP02"]
    assert sorted(await aredis.lrange(f"{base}:wait", 0, -1)) == ["Ev0DEDUP01", "Ev0DEDUP02"]
    # The first delivery's data is kept: slackq's without the legacy token, Node's as it added it.
    for envelope, kept in ((via_slackq, without_token(via_slackq)), (via_node, via_node)):
        job = await stored_job(aredis, settings.queue_prefix, settings.queue_name,
                               envelope["event_id"])
        assert job.data == kept, "the first delivery's data must be kept"


async def test_node_and_slackq_workers_share_a_queue_each_job_processed_once(
    settings: Settings, aredis: aioredis.Redis, fake_slack: FakeSlack
) -> None:
    """Both implementations consume the same queue at once: every job runs exactly once."""
    ids = [f"Ev0SHARED{n:02d}" for n in range(12)]
    base = f"{settings.queue_prefix}:{settings.queue_name}"
    worker_config = config(settings, mode="complete", limit=len(ids))
    async with node_script("worker", worker_config) as node, slackq_worker(settings):
        await node.wait_for("ready")
        async with webhook(settings) as client:
            for n, job_id in enumerate(ids):
                # One channel each: slackq's per-channel pacing is not what this test is about.
                await post_event(client, app_mention_envelope(job_id, channel=f"C0SHARED{n:02d}"))

        async def all_completed() -> bool:
            return bool(await aredis.zcard(f"{base}:completed") == len(ids))

        await until(all_completed, 30, "every shared job to complete")
    by_node = [m["id"] for m in node.messages if m["event"] == "process"]
    by_slackq = [c.args["channel"] for c in fake_slack.calls_to("chat.postMessage")]
    assert len(by_node) + len(by_slackq) == len(ids), (by_node, by_slackq)
    assert len(set(by_node)) == len(by_node) and len(set(by_slackq)) == len(by_slackq)
    handled_by_slackq = {f"Ev0SHARED{channel[-2:]}" for channel in by_slackq}
    assert handled_by_slackq.isdisjoint(by_node)
    assert await aredis.zcard(f"{base}:failed") == 0


async def test_a_job_slackq_deferred_on_a_429_is_an_ordinary_delayed_job_for_node(
    settings: Settings, aredis: aioredis.Redis, fake_slack: FakeSlack
) -> None:
    """slackq's 429 deferral (moveToDelayed, no attempt burned) hands Node a normal job."""
    fake_slack.script("chat.postMessage", rate_limited(1))
    jobs = [{"name": "app_mention", "data": app_mention_envelope("Ev0DEFER01"),
             "opts": job_options("Ev0DEFER01", settings)}]
    async with node_script("producer", config(settings, jobs=jobs)) as node:
        await node.finish()

    async def deferred() -> StoredJob | None:
        job = await stored_job(aredis, settings.queue_prefix, settings.queue_name, "Ev0DEFER01")
        return job if job.state == "delayed" else None

    async with slackq_worker(settings):
        job = await until(deferred, 15, "slackq to defer the rate-limited job")
    assert job.attempts_made == 0
    assert len(fake_slack.calls_to("chat.postMessage")) == 1

    async with node_script("worker", config(settings, mode="complete", limit=1)) as node:
        messages = await node.finish()
    [seen] = [m for m in messages if m["event"] == "process"]
    assert (seen["id"], seen["attemptsMade"]) == ("Ev0DEFER01", 0)
    assert seen["data"] == app_mention_envelope("Ev0DEFER01")
