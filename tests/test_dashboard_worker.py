"""What the dashboard shows of the real worker process: BullMQ's completed/failed metrics, the
wait-time history, each attempt of a retried job, and the worker process by its client name.

One deployment (redis-server, the web app with the dashboard, `python -m worker`, the Slack
stand-in) over HTTP; the history's layout and the timeline's arithmetic are checked without it.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis

from dashboard.history import wait_series
from dashboard.timeline import attempt_steps
from harness.slack_standin import FakeSlack, server_error, slack_error
from slackq.connection import DASHBOARD, redis_client
from slackq.embedded import RedisProcess
from slackq.wait_history import MinuteWaits, WaitKeys, read_waits, write_commands
from tests.browser_support import fake_slack, post_event, serve
from tests.dashboard_support import ADMIN, admin_settings, mention
from tests.processes import Proc, process_env
from tests.slack_requests import BOT_TOKEN
from tests.waiting import wait_until_sync
from worker.waits import WaitRecorder

QUEUE = "bull:slack-events"


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    fake = fake_slack()
    yield fake
    fake.stop()


def _caption(html: str, period: str, label: str) -> str:
    """The text of one chart's caption in one period of the overview."""
    section = html.split(f'id="period-{period}"', 1)[1].split('class="period"', 1)[0]
    match = re.search(rf'<figure class="chart {label}"><figcaption>([^<]*)</figcaption>', section)
    assert match, (period, label)
    return match.group(1)


def _done(client: redis.Redis, job_id: str) -> bool:
    return any(client.zscore(f"{QUEUE}:{state}", job_id) is not None
               for state in ("completed", "failed"))


def test_real_worker_fills_charts_waits_attempts_and_is_named(
        redis_server: RedisProcess, slack: FakeSlack, tmp_path: Path) -> None:
    settings = admin_settings(redis_server.url, slack.base_url, job_attempts=2,
                              job_backoff_delay_ms=50, job_backoff_jitter=0)
    env = process_env(REDIS_URL=settings.redis_url, SLACK_BOT_TOKEN=BOT_TOKEN,
                      SLACK_API_URL=settings.slack_api_url, WORKER_RATE_PER_CHANNEL="0")
    with serve(settings) as base, httpx.Client(base_url=base, auth=ADMIN, timeout=10) as web:
        worker = Proc("worker", env, tmp_path)
        try:
            worker.wait_for_output("worker_started", timeout=30)
            with redis.Redis.from_url(settings.redis_url, decode_responses=True) as client:
                # EvW1 fails for good; EvW2 gets a 500, then completes; the others at once.
                for n, answer in ((1, slack_error("channel_not_found")), (2, server_error(500)),
                                  (3, None), (4, None)):
                    if answer:
                        slack.script("chat.postMessage", answer)
                    post_event(base, mention(f"EvW{n}", f"CW{n}", f"wait test {n}"))
                    wait_until_sync(partial(_done, client, f"EvW{n}"), what=f"EvW{n} done")
                names = [c["name"] for c in client.client_list()]
                assert client.zcard(f"{QUEUE}:failed") == 1
            name = f"{QUEUE}:w:{socket.gethostname()}:{worker.popen.pid}"
            # The blocking wait, the BullMQ pool's connections and the command client: all named.
            assert names.count(name) >= 3, names
            overview = web.get("/admin/").text
            assert f"{socket.gethostname()}:{worker.popen.pid}" in overview
            assert re.search(r"Python: <strong>1</strong> named worker process", overview)
            for period in ("hour", "day", "week"):
                assert _caption(overview, period, "completed").startswith("completed: 3 ")
                assert _caption(overview, period, "failed").startswith("failed: 1 ")
            detail = web.get("/admin/jobs/EvW2").text
        finally:
            worker.stop()  # SIGTERM: the worker sends the waits it has not sent yet
        assert worker.popen.returncode == 0
        overview = web.get("/admin/").text
    for period in ("hour", "day", "week"):
        assert re.fullmatch(r"wait: mean \S+ s, longest \S+ s, 4 job\(s\)",
                            _caption(overview, period, "wait")), period
    timeline = detail.split('id="timeline"', 1)[1].split("</ol>", 1)[0]
    assert "attempt 1 failed" in timeline and "500" in timeline  # its error, from its stack
    assert re.search(r"attempt 2 started</span> <time>\d{4}-", timeline)


async def test_wait_history_round_trip_and_bars(redis_server: RedisProcess) -> None:
    keys = WaitKeys("bull", "slack-events")
    minute = 1_700_000_040 // 3600 * 3600 + 3540  # the last minute of an hour
    batch = {minute: MinuteWaits(2, 3000, 2500), minute + 60: MinuteWaits(1, 400, 400)}
    client = redis_client(redis_server.url, DASHBOARD)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for command in write_commands(keys, batch) + write_commands(keys, {
                    minute: MinuteWaits(1, 100, 100)}):  # a second process, the same minute
                pipe.execute_command(*command)
            await pipe.execute()
        read = await read_waits(client, keys, minute - 3600, minute + 120)
        assert read == {minute: MinuteWaits(3, 3100, 2500), minute + 60: MinuteWaits(1, 400, 400)}
        assert 0 < await client.ttl(keys.sums(minute + 60)) <= 8 * 86_400
        hour = wait_series(read, minute + 60, 60, 1)
        assert (hour.jobs, hour.mean_ms, hour.max_ms) == (4, 875, 2500)
        assert hour.bars[-2:] == [3100 // 3, 400] and sum(hour.bars[:-2]) == 0
    finally:
        await client.aclose()


async def test_recorder_counts_first_starts_only(redis_server: RedisProcess) -> None:
    client = redis_client(redis_server.url, DASHBOARD)
    recorder = WaitRecorder(client, "bull", "slack-events")

    def job(started: int, stored: int, ats: int) -> Any:
        return SimpleNamespace(processedOn=started, timestamp=stored, attemptsStarted=ats)

    try:
        minute_ms = 1_700_000_040_000
        recorder.note(job(minute_ms + 900, minute_ms + 100, 1))
        recorder.note(job(minute_ms + 5000, minute_ms, 2))  # a retry: not a wait
        recorder.note(job(minute_ms + 300, minute_ms + 100, 1))
        assert await recorder.flush() == 1 and await recorder.flush() == 0
        read = await read_waits(client, recorder.keys, minute_ms // 1000 - 60,
                                minute_ms // 1000 + 60)
        assert read == {minute_ms // 1000: MinuteWaits(2, 1000, 800)}
    finally:
        await client.aclose()


def _job(made: int, started: int, failures: int, traces: int | None = None) -> Any:
    stacks = [f"Traceback\n  ...\nRuntimeError: failure {n}\n" for n in range(1, failures + 1)]
    return SimpleNamespace(attemptsMade=made, attemptsStarted=started, stalledCounter=0,
                           stacktrace=stacks[-traces:] if traces else stacks,
                           processedOn=2_000, timestamp=1_000)


def test_attempt_steps_name_each_attempt() -> None:
    steps = attempt_steps(_job(2, 3, 2), "failed", 1_000)  # both failed; one run deferred
    assert [s.label for s in steps] == ["attempt 1 failed", "attempt 2 started",
                                        "runs that were not attempts"]
    assert steps[0].at_ms is None and "RuntimeError: failure 1" in steps[0].detail
    assert steps[1].at_ms == 2_000 and "failed: RuntimeError: failure 2" in steps[1].detail
    assert "1 start(s) more" in steps[2].detail
    completed = attempt_steps(_job(3, 3, 2, traces=1), "completed", 1_000)
    assert [s.label for s in completed] == ["attempt 1 failed", "attempt 2 failed",
                                            "attempt 3 started"]
    assert "not kept" in completed[0].detail and "failure 2" in completed[1].detail
    first = attempt_steps(_job(0, 1, 0), "active", 1_000)
    assert [s.label for s in first] == ["attempt 1 started"]
    assert "1.000 s after it was stored" in first[0].detail
