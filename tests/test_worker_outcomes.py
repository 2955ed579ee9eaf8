"""How the worker ends each job, against a real Redis and the Slack stand-in (worker in-process).

429 → delayed without burning an attempt or holding a slot; permanent Slack errors and invalid
payloads → failed at once with the code; transient errors → retried with jittered backoff, then
failed and kept; completed Slack calls are not repeated on a re-run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
import structlog
from bullmq import Job, Queue
from structlog.testing import capture_logs

from harness.slack_standin import FakeSlack, rate_limited, server_error, slack_error
from slackq.embedded import free_port
from slackq.settings import Settings
from tests.waiting import wait_until
from tests.worker_app import app_registry
from tests.worker_helpers import add_mention, job_key, job_state
from worker.errors import SlackTransientError
from worker.limiter import Limits
from worker.runner import WorkerOptions, WorkerRuntime, start_worker
from worker.slack import call_slack, make_client

StartWorker = Callable[..., Awaitable[WorkerRuntime]]
NO_PACING = Limits(per_channel=0, per_team=0)


@pytest.fixture
async def start(settings: Settings) -> AsyncIterator[StartWorker]:
    runtimes: list[WorkerRuntime] = []

    async def _start(*, concurrency: int = 10, settings_update: dict[str, Any] | None = None,
                     **options: Any) -> WorkerRuntime:
        options.setdefault("grace_seconds", 3.0)
        options.setdefault("limits", NO_PACING)
        worker_settings = settings.model_copy(
            update={"worker_concurrency": concurrency, **(settings_update or {})})
        runtime = await start_worker(
            worker_settings, app_registry(),
            replace(WorkerOptions.from_settings(worker_settings), **options))
        runtimes.append(runtime)
        return runtime

    yield _start
    for runtime in runtimes:
        await runtime.stop()


async def state_is(client: aioredis.Redis, settings: Settings, job_id: str, state: str,
                   within: float = 15.0) -> None:
    async def check() -> bool:
        return await job_state(client, settings, job_id) == state

    await wait_until(check, within, f"job {job_id} {state}")


async def test_429_delays_the_job_without_burning_an_attempt_or_holding_the_slot(
    start: StartWorker, queue: Queue, aclient: aioredis.Redis, settings: Settings,
    fake_slack: FakeSlack,
) -> None:
    fake_slack.script("chat.postMessage", rate_limited(2))
    await start(concurrency=1)
    await add_mention(queue, "Ev0RATE0001", channel="C0LIMITED")
    await state_is(aclient, settings, "Ev0RATE0001", "delayed", within=10)

    # The only slot is free: another job runs while the first one waits out Retry-After.
    await add_mention(queue, "Ev0RATE0002", channel="C0OTHER")
    await state_is(aclient, settings, "Ev0RATE0002", "completed", within=10)
    assert await job_state(aclient, settings, "Ev0RATE0001") == "delayed"

    await state_is(aclient, settings, "Ev0RATE0001", "completed", within=15)
    posts = fake_slack.calls_to("chat.postMessage")
    limited = [c for c in posts if c.args["channel"] == "C0LIMITED"]
    assert len(limited) == 2
    assert limited[1].at - limited[0].at >= 2.0  # Retry-After honoured
    fields = await aclient.hgetall(job_key(settings, "Ev0RATE0001"))
    assert fields["atm"] == "1"  # the 429 did not count as an attempt
    assert int(fields["ats"]) == 2  # ...although the job was started twice
    assert "failedReason" not in fields


async def test_permanent_slack_errors_fail_at_once_with_the_code_in_the_reason(
    start: StartWorker, queue: Queue, aclient: aioredis.Redis, settings: Settings,
    fake_slack: FakeSlack,
) -> None:
    codes = ["channel_not_found", "not_in_channel", "invalid_auth", "account_inactive"]
    fake_slack.script("chat.postMessage", *(slack_error(code) for code in codes))
    await start(concurrency=1)  # one at a time: the scripted answers go in order
    for n, _code in enumerate(codes):
        await add_mention(queue, f"Ev0PERM000{n}", channel=f"C0PERM{n}")
    for n, code in enumerate(codes):
        job_id = f"Ev0PERM000{n}"
        await state_is(aclient, settings, job_id, "failed")
        fields = await aclient.hgetall(job_key(settings, job_id))
        assert code in fields["failedReason"]
        assert fields["atm"] == "1"
        # Kept 24 h, at most 10,000 of them, with the last attempt's traceback only.
        assert json.loads(fields["opts"])["removeOnFail"] == {"age": 86_400, "count": 10_000}
    assert len(fake_slack.calls_to("chat.postMessage")) == len(codes)  # none retried


async def test_invalid_payload_fails_at_once(
    start: StartWorker, queue: Queue, aclient: aioredis.Redis, settings: Settings,
    fake_slack: FakeSlack,
) -> None:
    await start()
    await queue.add("app_mention", {"type": "event_callback", "event_id": "Ev0BAD0001",
                                    "team_id": "T0TEAM001", "event": {"type": "app_mention"}},
                    {"jobId": "Ev0BAD0001", "attempts": 5, "backoff": 10})
    await state_is(aclient, settings, "Ev0BAD0001", "failed")
    fields = await aclient.hgetall(job_key(settings, "Ev0BAD0001"))
    assert fields["failedReason"].startswith("invalid_payload: event.app_mention.channel")
    assert fields["atm"] == "1"
    assert fake_slack.calls_to("chat.postMessage") == []


async def test_transient_errors_retry_with_jittered_backoff_then_stay_failed(
    start: StartWorker, queue: Queue, aclient: aioredis.Redis, settings: Settings,
    fake_slack: FakeSlack,
) -> None:
    backoff = {"type": "exponential", "delay": 400, "jitter": 0.5}
    fake_slack.script("chat.postMessage", server_error(500), server_error(503), server_error(502),
                      server_error(500), server_error(500))
    await start(concurrency=1)
    with capture_logs() as logs:
        await add_mention(queue, "Ev0FLAKY001", channel="C0FLAKY",
                          opts={"attempts": 3, "backoff": backoff})
        await state_is(aclient, settings, "Ev0FLAKY001", "failed", within=15)
    calls = fake_slack.calls_to("chat.postMessage")
    assert len(calls) == 3  # attempts, no more
    # Node's exponential with jitter 0.5: 1st retry in [200, 400) ms, 2nd in [400, 800) ms.
    delays = [e["delay_ms"] for e in logs if e["event"] == "job_retry_scheduled"]
    assert len(delays) == 2 and 200 <= delays[0] < 400 and 400 <= delays[1] < 800
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert all(gap >= delay / 1000 - 0.05 for gap, delay in zip(gaps, delays, strict=True))
    assert [e["event"] for e in logs if e.get("log_level") == "error"] == ["job_attempts_exhausted"]
    fields = await aclient.hgetall(job_key(settings, "Ev0FLAKY001"))
    assert "HTTP 502" in fields["failedReason"]
    assert fields["atm"] == "3"
    assert json.loads(fields["opts"])["backoff"] == backoff  # Node still sees its own option

    # Two failures, then Slack recovers: the job completes within its attempts.
    await add_mention(queue, "Ev0FLAKY002", channel="C0FLAKY2",
                      opts={"attempts": 3, "backoff": {"type": "fixed", "delay": 50}})
    await state_is(aclient, settings, "Ev0FLAKY002", "completed", within=15)
    assert (await aclient.hgetall(job_key(settings, "Ev0FLAKY002")))["atm"] == "3"


async def test_a_mention_logs_one_info_line_with_the_reply_on_it(
    start: StartWorker, queue: Queue, aclient: aioredis.Redis, settings: Settings,
    fake_slack: FakeSlack,
) -> None:
    """The default handler's job writes one line at info, `job_completed`, with what an
    operator needs about the reply (channel, thread, whether a re-run found it posted); the
    handler's own `slack_reply_posted` is a debug line. The next job in the same task (fetched
    by the first one's completion) carries none of the first one's fields."""
    await add_mention(queue, "Ev0LINE0001", channel="C0LINE1", thread_ts="1700000000.000001")
    await queue.add("no_such_event", {"event_id": "Ev0LINE0002"}, {"jobId": "Ev0LINE0002"})
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await start(concurrency=1)  # both jobs in one task: the second comes with the first
        await state_is(aclient, settings, "Ev0LINE0002", "completed")
    first = [e for e in logs if e.get("job_id") == "Ev0LINE0001"]
    assert [e["event"] for e in first if e["log_level"] != "debug"] == ["job_completed"]
    assert [e["event"] for e in first if e["log_level"] == "debug"] == ["slack_reply_posted"]
    reply = {"channel": "C0LINE1", "thread_ts": "1700000000.000001", "skipped": False}
    assert {key: first[-1][key] for key in reply} == reply
    assert first[-1]["event_id"] == "Ev0LINE0001" and first[-1]["attempt"] == 1
    second = [e for e in logs if e.get("job_id") == "Ev0LINE0002"]
    assert [e["event"] for e in second] == ["job_ignored", "job_completed"]
    assert not any(key in line for line in second for key in reply)
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


async def test_unreachable_slack_is_a_transient_error(
    start: StartWorker, queue: Queue, aclient: aioredis.Redis, settings: Settings,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api/"
    await start(settings_update={"slack_api_url": dead})
    await add_mention(queue, "Ev0DOWN0001", opts={"attempts": 2, "backoff": 50})
    await state_is(aclient, settings, "Ev0DOWN0001", "failed", within=15)
    fields = await aclient.hgetall(job_key(settings, "Ev0DOWN0001"))
    assert "ClientConnectorError" in fields["failedReason"]
    assert fields["atm"] == "2"


async def test_a_slack_call_that_times_out_is_transient() -> None:
    # A listener that never answers: the request is sent and no response ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = make_client("xoxb-not-real", f"http://127.0.0.1:{silent.getsockname()[1]}/api/")
        client.timeout = 1
        with pytest.raises(SlackTransientError, match="Timeout"):
            await call_slack(client, "chat.postMessage", {"channel": "C1", "text": "x"})


async def test_a_slack_call_logs_no_debug_line_with_slacks_answer(
        fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    # slack-sdk's debug lines print the request and Slack's answer unbounded (hostile data), and
    # building them cost a fifth of each call's CPU: the worker's client stays above DEBUG even
    # when the process logs at DEBUG.
    client = make_client("xoxb-not-real", fake_slack.base_url)
    with caplog.at_level(logging.DEBUG):
        answer = await call_slack(client, "chat.postMessage", {"channel": "C1", "text": "x"})
    assert answer["ok"] is True
    assert not [r for r in caplog.records if r.levelno < logging.INFO]
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


async def test_a_rerun_skips_the_recorded_post_and_a_lost_record_is_counted(
    start: StartWorker, queue: Queue, aclient: aioredis.Redis, settings: Settings,
    fake_slack: FakeSlack,
) -> None:
    runtime = await start(lock_duration_ms=1_000)  # how long a re-run waits for a lost record
    await add_mention(queue, "Ev0ONCE0001")
    await state_is(aclient, settings, "Ev0ONCE0001", "completed")
    effects_key = job_key(settings, "Ev0ONCE0001")  # recorded in the job's own hash
    recorded = json.loads(await aclient.hget(effects_key, "slackq:done:reply"))
    assert recorded == {"channel": "C0CHAN001", "ts": recorded["ts"]}

    # Run the same job again, as after a crash: the recorded reply is not posted twice.
    job = await Job.fromId(runtime.worker, "Ev0ONCE0001")
    await job.retry("completed")
    await wait_until(lambda: _atm_is(aclient, settings, "Ev0ONCE0001", 2), 15, "second run")
    assert len(fake_slack.calls_to("chat.postMessage")) == 1

    # The window that remains: a run that began the call died before its record. The re-run
    # waits once for that run's record, then posts again; the duplicate is detected and counted.
    await aclient.hdel(effects_key, "slackq:done:reply")
    await aclient.hset(effects_key, "slackq:start:reply", "token-of-a-dead-run")
    await job.retry("completed")
    await wait_until(lambda: _atm_is(aclient, settings, "Ev0ONCE0001", 3), 15, "third run")
    assert len(fake_slack.calls_to("chat.postMessage")) == 2
    duplicates = f"{settings.queue_prefix}:slackq:{settings.queue_name}:effects:possible-duplicates"
    assert await aclient.get(duplicates) == "1"


async def _atm_is(client: aioredis.Redis, settings: Settings, job_id: str, atm: int) -> bool:
    fields = await client.hgetall(job_key(settings, job_id))
    return fields.get("atm") == str(atm) and fields.get("finishedOn") is not None and (
        await job_state(client, settings, job_id) == "completed")


async def test_slack_calls_share_keep_alive_connections(
    settings: Settings, queue: Queue, aclient: aioredis.Redis,
) -> None:
    """One aiohttp session per worker process: calls reuse connections instead of opening one
    each (slack-sdk opens and closes a session per call when it is given none)."""
    slack = FakeSlack(keep_alive=True).start()
    try:
        worker_settings = settings.model_copy(
            update={"slack_api_url": slack.base_url, "worker_concurrency": 1})
        runtime = await start_worker(
            worker_settings, app_registry(),
            replace(WorkerOptions.from_settings(worker_settings), grace_seconds=3.0,
                    limits=NO_PACING))
        try:
            for i in range(6):
                await add_mention(queue, f"Ev0KEEP000{i}", channel=f"C0KEEP{i}")
            calls = await asyncio.to_thread(slack.wait_for_calls, "chat.postMessage", 6)
        finally:
            await runtime.stop()
    finally:
        slack.stop()
    assert len({call.client_port for call in calls}) == 1, [c.client_port for c in calls]
