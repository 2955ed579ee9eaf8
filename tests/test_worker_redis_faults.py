"""Redis faults while jobs are mid-call: no Slack post is repeated (real worker process, real
redis-server, the Slack stand-in holding its replies until the fault has begun).

Each test puts 12 `app_mention` jobs (one channel each) in flight, waits until Slack has every
call, breaks Redis, lets Slack answer, keeps Redis broken for the fault's duration, repairs it
and counts the posts per job once every job has completed. The faults: Redis refusing writes
(`maxmemory` reached under `noeviction`) for 10 s; Redis unreachable (SIGSTOP) for longer than
the job locks; Redis killed and restarted from its AOF, at once or after refusing connections for
longer than the clients' connection retry. Issue 14 states the last two for the default 20 s lock
(30 s faults); the worker's command retry lasts about a lock (slackq.connection.command_retry),
so those tests give the worker a 5 s lock (SHORT_LOCK) and keep Redis away for 12 s: the same
fault, outliving lock and retry, in 40 % of the time.
A fourth test kills the worker itself between Slack's answer and the record: the window
docs/worker.md documents, where a re-run may post again and the duplicate is counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from slackq.embedded import RedisProcess, free_port
from slackq.settings import Settings
from tests.held_slack import HeldSlack
from tests.processes import process_env
from tests.slack_requests import BOT_TOKEN
from tests.waiting import wait_until_sync
from tests.worker_helpers import WorkerProc, add_mention, make_queue, sync_job_state

JOBS = 12
CHANNELS = [f"C0FAULT{n:03d}" for n in range(JOBS)]
EVENT_IDS = [f"Ev0FAULT{n:04d}" for n in range(JOBS)]
# A 5 s job lock (and with it the command retry): faults of LONG_FAULT_SECONDS outlive both.
SHORT_LOCK = {"WORKER_LOCK_DURATION_MS": "5000"}
LONG_FAULT_SECONDS = 12


@pytest.fixture
def held() -> Iterator[HeldSlack]:
    slack = HeldSlack().start()
    yield slack
    slack.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    # `always`: what Redis acknowledged is on disk, so a restart gives it all back.
    process = RedisProcess(data_dir=tmp_path / "redis", overrides={"appendfsync": "always"})
    process.start()
    yield process
    if process.process is not None and process.process.poll() is None:
        os.kill(process.process.pid, signal.SIGCONT)  # a failed SIGSTOP test must not hang
    process.kill()


@pytest.fixture
def workers() -> Iterator[list[WorkerProc]]:
    started: list[WorkerProc] = []
    yield started
    for proc in started:
        proc.stop()


def start_worker(server: RedisProcess, held: HeldSlack, tmp_path: Path, name: str = "worker",
                 concurrency: int = JOBS, **env: str) -> WorkerProc:
    worker = WorkerProc(name, process_env(
        REDIS_URL=server.url, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_API_URL=held.base_url,
        WORKER_RATE_PER_CHANNEL="0", WORKER_CONCURRENCY=str(concurrency), **env), tmp_path)
    worker.wait_for_event("worker_started")
    return worker


def put_jobs_in_flight(server: RedisProcess, held: HeldSlack, count: int = JOBS) -> None:
    async def add() -> None:
        queue = make_queue(Settings(redis_url=server.url))
        try:
            for event_id, channel in zip(EVENT_IDS[:count], CHANNELS, strict=False):
                await add_mention(queue, event_id, channel=channel)
        finally:
            await queue.close()

    asyncio.run(add())
    wait_until_sync(lambda: held.posts_arrived() == count, 30, "every job inside its Slack call")


def wait_all_completed(server: RedisProcess, within: float, count: int = JOBS) -> None:
    settings = Settings(redis_url=server.url)
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        wait_until_sync(lambda: all(sync_job_state(client, settings, job_id) == "completed"
                                    for job_id in EVENT_IDS[:count]), within,
                        "every job completed")


def assert_posted_once_each(held: HeldSlack, fault: str) -> None:
    posts = held.posts_per_channel()
    doubled = sorted(channel for channel in CHANNELS if posts[channel] > 1)
    print(f"{fault}: {sum(posts.values())} posts for {JOBS} jobs, {len(doubled)} posted twice")
    assert {channel: posts[channel] for channel in CHANNELS} == dict.fromkeys(CHANNELS, 1)


def fill(server: RedisProcess) -> redis.Redis:
    """Make Redis refuse writes: maxmemory just above what it uses, then values until full."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 2_000_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        for n in range(10_000):
            client.set(f"test:filler:{n}", "x" * 10_000)
    # Full, not nearly full: a write of any size is refused, as on a Redis that stays full.
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 100_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("test:probe", "x")
    return client


def free(client: redis.Redis) -> None:
    client.delete(*client.keys("test:filler:*"))
    client.config_set("maxmemory", "450mb")
    client.close()


@pytest.mark.slow
def test_redis_refusing_writes_for_10s_doubles_no_post_and_logs_a_bounded_number_of_lines(
    server: RedisProcess, held: HeldSlack, workers: list[WorkerProc], tmp_path: Path,
) -> None:
    """Every slot (12) holding a job when Redis starts refusing writes for 10 s: no post is
    repeated, and the worker logs one line per backoff step (0.25 s doubling to 2 s: 8 in 10 s),
    not one per attempt per slot, while its metrics count every error. (One run for both: they
    were two tests of the same fault, at concurrency 12 and 10.)"""
    port = free_port()
    worker = start_worker(server, held, tmp_path, METRICS_PORT=str(port))
    workers.append(worker)
    put_jobs_in_flight(server, held)
    assert redis_errors(port) == 0
    logged_before = len(worker.output().splitlines())
    client = fill(server)
    held.release()  # Slack answers while Redis refuses every write
    time.sleep(10)  # the fault's duration (the scenario, not a wait for an effect)
    during = worker.output().splitlines()[logged_before:]
    free(client)
    wait_all_completed(server, 60)
    errors = redis_errors(port)
    # Beyond each job's own `job_completed` (info): warnings and errors only.
    alarms = [line for line in during if '"level": "warning"' in line
              or '"level": "error"' in line or not line.startswith("{")]
    print(f"10 s of refused writes, concurrency {JOBS}: {len(alarms)} warning/error lines "
          f"({len(during)} lines in all), {errors:.0f} Redis errors counted")
    assert 0 < len(alarms) <= 15
    assert errors > len(alarms)
    assert_posted_once_each(held, "Redis refusing writes 10 s")


def redis_errors(port: int) -> float:
    """`slackq_worker_redis_errors_total` summed over its labels, from the worker's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("slackq_worker_redis_errors_total{"))


@pytest.mark.slow
def test_redis_unreachable_longer_than_the_locks_doubles_no_post(
    server: RedisProcess, held: HeldSlack, workers: list[WorkerProc], tmp_path: Path,
) -> None:
    workers.append(start_worker(server, held, tmp_path, **SHORT_LOCK))
    put_jobs_in_flight(server, held)
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    held.release()  # Slack answers while Redis does not
    time.sleep(LONG_FAULT_SECONDS)  # the fault's duration: longer than the lock and retry (5 s)
    os.kill(server.process.pid, signal.SIGCONT)
    wait_all_completed(server, 90)
    assert_posted_once_each(held, f"Redis unreachable {LONG_FAULT_SECONDS} s (5 s locks)")


@pytest.mark.durability
@pytest.mark.parametrize("down_seconds", [0, pytest.param(LONG_FAULT_SECONDS,
                                                           marks=pytest.mark.slow)],
                         ids=["at-once", "after-the-retry"])
def test_redis_restarted_from_its_aof_doubles_no_post(
    server: RedisProcess, held: HeldSlack, workers: list[WorkerProc], tmp_path: Path,
    down_seconds: int,
) -> None:
    """Killed, then restarted at once, or after refusing connections for longer than the Redis
    clients' own retries (about a lock duration: 5 s here)."""
    workers.append(start_worker(server, held, tmp_path, **(SHORT_LOCK if down_seconds else {})))
    put_jobs_in_flight(server, held)
    server.kill()
    held.release()  # Slack answers while Redis is down
    time.sleep(down_seconds)  # the fault's duration (the scenario, not a wait for an effect)
    server.start()
    wait_all_completed(server, 90)
    assert_posted_once_each(held, f"Redis restarted from its AOF after {down_seconds} s")


def test_a_worker_killed_between_slacks_answer_and_the_record_may_post_twice_counted(
    server: RedisProcess, held: HeldSlack, workers: list[WorkerProc], tmp_path: Path,
) -> None:
    """The documented window (docs/worker.md, "Effects"): Slack has the call, the worker dies
    before it records the answer. The re-run cannot know whether Slack acted: it waits once for
    a record that never comes, then posts again, logs `slack_effect_possible_duplicate` and
    counts it."""
    fast = {"WORKER_LOCK_DURATION_MS": "2000", "WORKER_STALLED_INTERVAL_MS": "500"}
    doomed = start_worker(server, held, tmp_path, "doomed", **fast)
    workers.append(doomed)
    put_jobs_in_flight(server, held)
    doomed.kill()  # inside the window: every call reached Slack, no answer came back yet
    held.release()
    survivor = start_worker(server, held, tmp_path, "survivor", **fast)
    workers.append(survivor)
    wait_all_completed(server, 60)
    posts = held.posts_per_channel()
    assert {channel: posts[channel] for channel in CHANNELS} == dict.fromkeys(CHANNELS, 2)
    warned = {e["job_id"] for e in survivor.events("slack_effect_possible_duplicate")}
    assert warned == set(EVENT_IDS)
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        counted = client.get("bull:slackq:slack-events:effects:possible-duplicates")
    assert counted == str(JOBS)
    print(f"worker killed in the window: {sum(posts.values())} posts for {JOBS} jobs, "
          f"{counted} counted as possible duplicates")
