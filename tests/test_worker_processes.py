"""The worker as real processes: SIGTERM, SIGKILL mid-job, Redis restarted, start-up checks.

Lock and stalled-check timings are shortened through the environment (WORKER_LOCK_DURATION_MS,
WORKER_STALLED_INTERVAL_MS) so crash recovery is observable within seconds.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness.slack_standin import FakeSlack
from slackq.embedded import RedisProcess
from slackq.settings import Settings
from tests.processes import Proc, process_env
from tests.slack_requests import BOT_TOKEN
from tests.waiting import wait_until_sync
from tests.worker_helpers import (
    WorkerProc,
    add_mention,
    job_key,
    make_queue,
    state_key,
    sync_job_state,
)


def enqueue(settings: Settings, *event_ids: str, name: str = "held_mention") -> None:
    async def _add() -> None:
        queue = make_queue(settings)
        try:
            for n, event_id in enumerate(event_ids):
                await add_mention(queue, event_id, name=name, channel=f"C0PROC{n:03d}")
        finally:
            await queue.close()

    asyncio.run(_add())


@pytest.fixture
def worker_env(settings: Settings, fake_slack: FakeSlack) -> dict[str, str]:
    return process_env(
        REDIS_URL=settings.redis_url, SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_API_URL=fake_slack.base_url, WORKER_RATE_PER_CHANNEL="0",
    )


@pytest.fixture
def procs() -> Iterator[list[WorkerProc]]:
    started: list[WorkerProc] = []
    yield started
    for proc in started:
        proc.stop()


def test_sigterm_lets_the_in_flight_job_finish_and_exits_0(
    settings: Settings, worker_env: dict[str, str], procs: list[WorkerProc], tmp_path: Path,
    redis_client: redis.Redis, fake_slack: FakeSlack,
) -> None:
    worker = WorkerProc("worker", {**worker_env, "TEST_HOLD_SECONDS": "2"}, tmp_path)
    procs.append(worker)
    worker.wait_for_event("worker_started")
    enqueue(settings, "Ev0TERM0001")
    worker.wait_for_event("test_hold_started", job_id="Ev0TERM0001")

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0
    shutdown = time.monotonic() - signalled
    print(f"SIGTERM with a 2 s job in flight: exit 0 after {shutdown:.2f}s")

    assert sync_job_state(redis_client, settings, "Ev0TERM0001") == "completed"
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert 1.0 < shutdown < 25  # waited for the job, well within the grace period
    assert not worker.events("worker_force_closing")
    completed = worker.wait_for_event("job_completed", job_id="Ev0TERM0001")
    # Every line about the job carries its job id, event id, team id and attempt; the reply's
    # channel and thread are on the completion line (the handler's own line is at debug).
    about_job = [e for e in worker.events() if e.get("job_id") == "Ev0TERM0001"]
    assert {e["event"] for e in about_job} >= {
        "test_hold_started", "test_hold_finished", "job_completed"}
    assert "slack_reply_posted" not in {e["event"] for e in about_job}
    assert (completed["channel"], completed["skipped"]) == ("C0PROC000", False)
    for line in about_job:
        assert (line["event_id"], line["team_id"], line["attempt"]) == (
            "Ev0TERM0001", "T0TEAM001", 1), line
    assert worker.wait_for_event("worker_stopped")["shutdown_seconds"] < 25


def test_sigterm_force_closes_after_the_grace_period_and_exits_0(
    settings: Settings, worker_env: dict[str, str], procs: list[WorkerProc], tmp_path: Path,
    redis_client: redis.Redis,
) -> None:
    env = {**worker_env, "TEST_HOLD_SECONDS": "60", "WORKER_GRACE_SECONDS": "1.5"}
    worker = WorkerProc("worker", env, tmp_path)
    procs.append(worker)
    worker.wait_for_event("worker_started")
    enqueue(settings, "Ev0TERM0002")
    worker.wait_for_event("test_hold_started", job_id="Ev0TERM0002")

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0
    shutdown = time.monotonic() - signalled
    print(f"SIGTERM with a job longer than the 1.5 s grace: exit 0 after {shutdown:.2f}s")
    assert 1.5 <= shutdown < 10
    assert worker.events("worker_force_closing")[0]["job_ids"] == ["Ev0TERM0002"]
    # Not completed, not failed: the job stays active for the stalled check to hand it on.
    assert sync_job_state(redis_client, settings, "Ev0TERM0002") == "active"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_procfile_worker_stops_on_sigterm_and_sigint_with_exit_0(
    worker_env: dict[str, str], tmp_path: Path, signum: signal.Signals
) -> None:
    worker = Proc("worker", worker_env, tmp_path)
    try:
        worker.wait_for_output("worker_started")
        worker.signal(signum)
        assert worker.wait(timeout=30) == 0
        assert "worker_stopped" in worker.output()
    finally:
        worker.stop()


def test_a_job_longer_than_its_lock_keeps_the_lock_through_a_graceful_stop(
    settings: Settings, worker_env: dict[str, str], procs: list[WorkerProc], tmp_path: Path,
    redis_client: redis.Redis, fake_slack: FakeSlack,
) -> None:
    """The stopping worker keeps renewing the lock: no other worker takes the job over.

    The port's run loop closed its lock manager as soon as a close began: a job still running
    past `lockDuration` lost its lock, the survivor's stalled check re-ran it, and the first
    worker's completion failed with "Missing lock".
    """
    fast = {"WORKER_LOCK_DURATION_MS": "1000", "WORKER_STALLED_INTERVAL_MS": "500"}
    env = {**worker_env, **fast, "TEST_HOLD_SECONDS": "4", "WORKER_GRACE_SECONDS": "30"}
    stopping = WorkerProc("stopping", env, tmp_path)
    procs.append(stopping)
    stopping.wait_for_event("worker_started")
    enqueue(settings, "Ev0LOCK0001")
    stopping.wait_for_event("test_hold_started", job_id="Ev0LOCK0001")
    survivor = WorkerProc("survivor", {**worker_env, **fast}, tmp_path)
    procs.append(survivor)
    survivor.wait_for_event("worker_started")

    stopping.signal(signal.SIGTERM)
    assert stopping.popen.wait(timeout=30) == 0
    # The hold (4 s) outlasted the lock (1 s) several times over after SIGTERM.
    assert stopping.events("test_hold_finished")
    assert sync_job_state(redis_client, settings, "Ev0LOCK0001") == "completed"
    assert stopping.wait_for_event("job_completed", job_id="Ev0LOCK0001")["attempt"] == 1
    # (A renewal racing the completion may still log "could not renew lock": the port's, benign.)
    assert not [e for e in stopping.events("worker_error") if "Missing lock" in e["error"]]
    assert not survivor.events("job_stalled_requeued")
    assert not survivor.events("test_hold_started")
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


def test_a_job_of_a_killed_worker_is_completed_by_another_after_the_stalled_check(
    settings: Settings, worker_env: dict[str, str], procs: list[WorkerProc], tmp_path: Path,
    redis_client: redis.Redis, fake_slack: FakeSlack,
) -> None:
    fast = {"WORKER_LOCK_DURATION_MS": "2000", "WORKER_STALLED_INTERVAL_MS": "1000"}
    doomed = WorkerProc("doomed", {**worker_env, **fast, "TEST_HOLD_SECONDS": "60"}, tmp_path)
    procs.append(doomed)
    doomed.wait_for_event("worker_started")
    enqueue(settings, "Ev0KILL0001")
    doomed.wait_for_event("test_hold_started", job_id="Ev0KILL0001")  # it has posted the reply
    survivor = WorkerProc("survivor", {**worker_env, **fast}, tmp_path)
    procs.append(survivor)
    survivor.wait_for_event("worker_started")

    killed = time.monotonic()
    doomed.kill()
    recovered = wait_until_sync(
        lambda: sync_job_state(redis_client, settings, "Ev0KILL0001") == "completed", 20,
        "the killed worker's job completed by the survivor")
    print(f"SIGKILL mid-job: completed by the other worker {recovered:.2f}s after the kill "
          "(lock 2 s, stalled check 1 s)")

    assert survivor.wait_for_event("job_completed", job_id="Ev0KILL0001")["attempt"] == 1
    survivor.wait_for_event("job_stalled_requeued", job_id="Ev0KILL0001")
    # The reply the killed worker posted was recorded: the re-run did not post it again.
    survivor.wait_for_event("slack_effect_skipped", job_id="Ev0KILL0001")
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert time.monotonic() - killed < 20


def missing_jobs(client: redis.Redis, settings: Settings, job_ids: list[str]) -> list[str]:
    return [job_id for job_id in job_ids if not client.exists(job_key(settings, job_id))]


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisProcess]:
    # `always`: a job the producer was told is stored is on disk, so the test can demand it back.
    server = RedisProcess(data_dir=tmp_path / "aof", overrides={"appendfsync": "always"})
    server.start()
    yield server
    server.kill()


@pytest.mark.durability
def test_redis_killed_and_restarted_from_aof_while_jobs_run(
    aof_server: RedisProcess, fake_slack: FakeSlack, procs: list[WorkerProc], tmp_path: Path,
) -> None:
    settings = Settings(redis_url=aof_server.url, slack_bot_token=BOT_TOKEN,
                        slack_api_url=fake_slack.base_url)
    env = process_env(
        REDIS_URL=aof_server.url, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_API_URL=fake_slack.base_url,
        WORKER_RATE_PER_CHANNEL="0", WORKER_CONCURRENCY="6", TEST_HOLD_SECONDS="1.5",
        WORKER_LOCK_DURATION_MS="4000", WORKER_STALLED_INTERVAL_MS="1000",
    )
    worker = WorkerProc("worker", env, tmp_path)
    procs.append(worker)
    worker.wait_for_event("worker_started")
    in_flight = [f"Ev0AOF{n:04d}" for n in range(4)]
    enqueue(settings, *in_flight)
    for event_id in in_flight:
        worker.wait_for_event("test_hold_started", job_id=event_id)

    killed = time.monotonic()
    aof_server.kill()
    aof_server.start()
    ready = time.monotonic()
    client = redis.Redis.from_url(aof_server.url, decode_responses=True)
    try:
        assert missing_jobs(client, settings, in_flight) == []  # everything stored came back
        # Two free slots: this job runs as soon as the worker is fetching again.
        enqueue(settings, "Ev0AOF0100", name="app_mention")
        resumed = wait_until_sync(
            lambda: sync_job_state(client, settings, "Ev0AOF0100") == "completed", 30,
            "a job enqueued after the restart")
        print(f"Redis down {ready - killed:.2f}s; worker resumed, a new job completed "
              f"{resumed:.2f}s after the server was ready")
        wait_until_sync(lambda: all(sync_job_state(client, settings, j) == "completed"
                                    for j in in_flight), 30, "the in-flight jobs completed")
        print(f"the 4 jobs in flight at the kill completed {time.monotonic() - ready:.2f}s "
              "after the restart")
        assert worker.popen.poll() is None  # it never gave up
        posted = [c.args["channel"] for c in fake_slack.calls_to("chat.postMessage")]
        assert sorted(set(posted)) == sorted(f"C0PROC{n:03d}" for n in range(4))
        print(f"posts: {len(posted)} for 5 jobs (duplicates: {len(posted) - 5})")
    finally:
        client.close()


@pytest.mark.durability
def test_the_loss_check_catches_jobs_a_restart_lost(tmp_path: Path) -> None:
    # Control for the test above: without persistence a restart loses stored jobs, and
    # `missing_jobs` must say so.
    server = RedisProcess(data_dir=tmp_path / "volatile",
                          overrides={"appendonly": "no", "save": ""})
    server.start()
    try:
        settings = Settings(redis_url=server.url)
        enqueue(settings, "Ev0LOST0001", "Ev0LOST0002")
        server.kill()
        server.start()
        with redis.Redis.from_url(server.url, decode_responses=True) as client:
            assert missing_jobs(client, settings, ["Ev0LOST0001", "Ev0LOST0002"]) == [
                "Ev0LOST0001", "Ev0LOST0002"]
            assert client.llen(state_key(settings, "wait")) == 0
    finally:
        server.kill()


def test_worker_refuses_an_evicting_redis_unless_overridden(
    tmp_path: Path, fake_slack: FakeSlack
) -> None:
    server = RedisProcess(data_dir=tmp_path / "lru", overrides={"maxmemory-policy": "allkeys-lru"})
    server.start()
    try:
        env = process_env(REDIS_URL=server.url, SLACK_BOT_TOKEN=BOT_TOKEN,
                          SLACK_API_URL=fake_slack.base_url)
        for name in ("refused", "allowed"):
            (tmp_path / name).mkdir()
        refused = Proc("worker", env, tmp_path / "refused")
        assert refused.wait(timeout=30) == 2
        output = refused.output()
        refused.stop()
        assert "maxmemory-policy" in output and "allkeys-lru" in output
        assert "SLACKQ_ALLOW_EVICTION" in output

        allowed = Proc("worker", {**env, "SLACKQ_ALLOW_EVICTION": "1"}, tmp_path / "allowed")
        try:
            allowed.wait_for_output("worker_started")
            assert "redis_eviction_allowed" in allowed.output()
            allowed.signal(signal.SIGTERM)
            assert allowed.wait(timeout=30) == 0
        finally:
            allowed.stop()
    finally:
        server.kill()
