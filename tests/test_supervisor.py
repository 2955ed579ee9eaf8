"""The worker dyno's supervisor, with real processes: the Procfile's `worker` line, a real Redis.

Also the supervisor in process over real child processes, for what is hard to provoke through the
Procfile: a command that cannot be started, and a stop while a slot backs off.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from bullmq import Queue
from structlog.testing import capture_logs

from harness.slack_standin import FakeSlack
from slackq.contract import job_options
from slackq.embedded import RedisProcess
from slackq.settings import Settings, load_settings, usable_cpus
from tests.processes import START_DEADLINE, Proc, process_env
from tests.slack_requests import BOT_TOKEN, app_mention_envelope
from tests.waiting import wait_until as wait_for
from tests.worker_helpers import WorkerProc, make_queue, sync_job_state
from tests.worker_helpers import add_mention as enqueue_mention
from worker.supervisor import (
    SPAWN_FAILED_CODE,
    STOP_MARGIN_SECONDS,
    RestartPolicy,
    Supervisor,
    clean_exit,
)


def log_events(proc: Proc, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of `proc` (supervisor and children share its output) named `name`."""
    events = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name:
                events.append(entry)
    return events


def wait_until(proc: Proc, what: str, check: Callable[[], bool],
               timeout: float = START_DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{proc.output()}")
        if proc.popen.poll() is not None:
            raise AssertionError(f"supervisor exited {proc.popen.returncode}:\n{proc.output()}")
        time.sleep(0.05)


def wait_for_events(proc: Proc, name: str, count: int) -> list[dict[str, Any]]:
    wait_until(proc, f"{count} x {name}", lambda: len(log_events(proc, name)) >= count)
    return log_events(proc, name)


def worker_env(redis_url: str, slack_url: str, processes: int = 2) -> dict[str, str]:
    return process_env(REDIS_URL=redis_url, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_API_URL=slack_url,
                       WORKER_PROCESSES=str(processes))


@pytest.fixture
def dyno(redis_server: RedisProcess, fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Proc]:
    """The Procfile's `worker` with WORKER_PROCESSES=2, both children started."""
    proc = Proc("worker", worker_env(redis_server.url, fake_slack.base_url), tmp_path)
    try:
        wait_for_events(proc, "worker_started", 2)
        yield proc
    finally:
        proc.stop()


def child_pids(proc: Proc) -> list[int]:
    return [event["pid"] for event in log_events(proc, "worker_process_started")]


def test_sigterm_is_forwarded_and_every_child_stops_gracefully(dyno: Proc) -> None:
    pids = child_pids(dyno)
    assert len(pids) == 2 and dyno.popen.pid not in pids
    # Only the supervisor gets the signal: the children stop only if it is forwarded.
    dyno.signal(signal.SIGTERM)
    assert dyno.wait(timeout=25) == 0
    assert len(log_events(dyno, "worker_stopped")) == 2
    exited = log_events(dyno, "worker_process_exited")
    exits = {event["pid"]: event["returncode"] for event in exited}
    assert exits == {pid: 0 for pid in pids}
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def add_mention(redis_url: str, event_id: str) -> None:
    settings = Settings(redis_url=redis_url)
    queue = Queue(settings.queue_name, {"connection": redis_url, "prefix": settings.queue_prefix})
    try:
        await queue.add("app_mention", app_mention_envelope(event_id),
                        job_options(event_id, settings))
    finally:
        await queue.close()


def test_killed_children_are_restarted_and_keep_processing(
    dyno: Proc, redis_server: RedisProcess, fake_slack: FakeSlack
) -> None:
    first = child_pids(dyno)
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    started = wait_for_events(dyno, "worker_process_started", 4)
    wait_for_events(dyno, "worker_started", 4)
    restarts = log_events(dyno, "worker_process_restarting")
    assert sorted(event["returncode"] for event in restarts) == [-signal.SIGKILL] * 2
    replacements = [event["pid"] for event in started[2:]]
    assert set(replacements).isdisjoint(first)
    # Only the replacements are alive now: a reply proves they consume the queue.
    asyncio.run(add_mention(redis_server.url, "Ev0SUPERVISED1"))
    [call] = fake_slack.wait_for_calls("chat.postMessage", 1)
    assert call.args["channel"] == "C0CHAN001"
    dyno.signal(signal.SIGTERM)
    assert dyno.wait(timeout=25) == 0


def test_a_configuration_error_stops_the_dyno_without_restarts(
    fake_slack: FakeSlack, tmp_path: Path
) -> None:
    evicting = RedisProcess(data_dir=tmp_path / "redis",
                            overrides={"maxmemory-policy": "allkeys-lru"})
    evicting.start()
    proc = Proc("worker", worker_env(evicting.url, fake_slack.base_url), tmp_path)
    try:
        assert proc.wait(timeout=START_DEADLINE) == 2  # two children start, then stop
    finally:
        proc.stop()
        evicting.kill()
    assert log_events(proc, "worker_process_restarting") == []
    assert "maxmemory-policy" in proc.output()


def test_restart_backoff_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(base_seconds=0.5, cap_seconds=4.0)
    assert [policy.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.stable_seconds == 4.0


def test_the_supervisor_takes_its_timings_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKER_RESTART_DELAY_SECONDS", "0.25")
    monkeypatch.setenv("WORKER_RESTART_MAX_DELAY_SECONDS", "8")
    monkeypatch.setenv("WORKER_GRACE_SECONDS", "60")
    settings = load_settings()
    assert RestartPolicy.from_settings(settings) == RestartPolicy(0.25, 8.0)
    supervisor = Supervisor(["true"], 1, {}, child_grace_seconds=settings.worker_grace_seconds,
                            policy=RestartPolicy.from_settings(settings))
    assert supervisor.stop_timeout == 60 + STOP_MARGIN_SECONDS
    defaults = Settings.model_construct()
    assert RestartPolicy.from_settings(defaults) == RestartPolicy(0.5, 30.0)


def test_a_child_stopped_by_the_forwarded_signal_counts_as_clean() -> None:
    assert clean_exit(0) and clean_exit(-signal.SIGTERM) and clean_exit(-signal.SIGINT)
    assert not clean_exit(1) and not clean_exit(-signal.SIGKILL)


def test_worker_processes_defaults_to_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_PROCESSES", raising=False)
    assert Settings().worker_processes == usable_cpus() >= 1
    monkeypatch.setenv("WORKER_PROCESSES", "3")
    assert Settings().worker_processes == 3


def events_named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def child_script(path: Path, *, executable: bool = True) -> None:
    """Create `path` in one step: it notes its pid in $STARTED, then waits for a signal."""
    staging = path.with_suffix(".tmp")
    staging.write_text('#!/bin/sh\necho "$$" >> "$STARTED"\nexec sleep 600\n')
    staging.chmod(0o755 if executable else 0o644)
    staging.rename(path)


async def test_a_child_that_cannot_be_started_is_retried_with_the_backoff(tmp_path: Path) -> None:
    command, started = tmp_path / "child", tmp_path / "started"
    env = {"PATH": os.environ["PATH"], "STARTED": str(started)}
    supervisor = Supervisor([str(command)], 1, env, child_grace_seconds=5,
                            policy=RestartPolicy(base_seconds=0.05, cap_seconds=0.4))
    with capture_logs() as logs:
        run = asyncio.create_task(supervisor.run())

        def spawn_errors(kind: str) -> int:
            failed = events_named(logs, "worker_process_spawn_failed")
            return sum(kind in event["error"] for event in failed)

        # No file yet (ENOENT), then a file that cannot be executed (EACCES): the slot survives.
        await wait_for(lambda: spawn_errors("FileNotFoundError") >= 3, 20, "3 failed spawns")
        child_script(command, executable=False)
        await wait_for(lambda: spawn_errors("PermissionError") >= 1, 20, "EACCES spawn")
        command.chmod(0o755)
        await wait_for(started.exists, 20, "the child's start")
        assert not run.done()
        supervisor.request_stop()
        assert await asyncio.wait_for(run, 20) == 0
    [pid] = [int(line) for line in started.read_text().split()]
    assert [e["pid"] for e in events_named(logs, "worker_process_started")] == [pid]
    failed = events_named(logs, "worker_process_spawn_failed")
    assert all(e["index"] == 0 and e["command"] == str(command) for e in failed)
    restarts = events_named(logs, "worker_process_restarting")
    assert len(restarts) == len(failed)
    assert {e["returncode"] for e in restarts} == {SPAWN_FAILED_CODE}
    delays = [e["delay_seconds"] for e in restarts]
    assert delays[:4] == [0.05, 0.1, 0.2, 0.4] and set(delays[4:]) <= {0.4}
    assert events_named(logs, "worker_process_exited")[0]["returncode"] == -signal.SIGTERM
    assert events_named(logs, "supervisor_killing") == []


async def test_a_stop_while_a_slot_backs_off_ends_the_supervisor_at_once(tmp_path: Path) -> None:
    """The backoff (60 s here) gives way to a stop; the slot never started: not a clean exit."""
    supervisor = Supervisor([str(tmp_path / "never")], 2, {"PATH": os.environ["PATH"]},
                            child_grace_seconds=60,
                            policy=RestartPolicy(base_seconds=60, cap_seconds=60))
    with capture_logs() as logs:
        run = asyncio.create_task(supervisor.run())
        await wait_for(lambda: len(events_named(logs, "worker_process_restarting")) == 2, 20,
                         "both slots backing off")
        supervisor.request_stop()
        # Far less than the 60 s backoff: only a stop that interrupts the wait ends it in time.
        assert await asyncio.wait_for(run, 10) == 1
    assert len(events_named(logs, "worker_process_spawn_failed")) == 2
    assert events_named(logs, "worker_process_started") == []
    [stopped] = events_named(logs, "supervisor_stopped")
    assert stopped["child_codes"] == [SPAWN_FAILED_CODE] * 2
    assert events_named(logs, "supervisor_killing") == []


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_job_longer_than_30s_completes_within_a_60s_grace(
    redis_server: RedisProcess, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    """WORKER_GRACE_SECONDS=60 and a 36 s job: SIGTERM lets it finish; nothing is SIGKILLed.

    A supervisor that gave its children a fixed 30 s would SIGKILL this one mid-job: the test
    checks that the job was running when SIGTERM came and ran on for more than 30 s after it.
    SIGTERM follows the job's start by well under a second (the time to see its log line), so a
    36 s job leaves a margin of seconds above those 30.
    """
    settings = Settings(redis_url=redis_server.url)
    env = worker_env(redis_server.url, fake_slack.base_url)
    env.update(WORKER_GRACE_SECONDS="60", TEST_HOLD_SECONDS="36")
    dyno = WorkerProc("dyno", env, tmp_path)  # tests.worker_app: the supervisor of 2 children
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        wait_for_events(dyno, "worker_started", 2)
        queue = make_queue(settings)

        async def enqueue() -> None:
            try:
                await enqueue_mention(queue, "Ev0LONGJOB1", name="held_mention")
            finally:
                await queue.close()

        asyncio.run(enqueue())
        dyno.wait_for_event("test_hold_started", timeout=20)
        assert sync_job_state(client, settings, "Ev0LONGJOB1") == "active"
        dyno.signal(signal.SIGTERM)
        assert dyno.wait(timeout=120) == 0
        assert sync_job_state(client, settings, "Ev0LONGJOB1") == "completed"
    finally:
        dyno.stop()
        client.close()
    [stopping] = log_events(dyno, "supervisor_stopping")
    [finished] = log_events(dyno, "test_hold_finished")
    assert at(finished) - at(stopping) > 30  # past the supervisor's old fixed grace
    assert log_events(dyno, "supervisor_killing") == []
    assert log_events(dyno, "worker_force_closing") == []
    exits = log_events(dyno, "worker_process_exited")
    assert [e["returncode"] for e in exits] == [0, 0]
    [completed] = log_events(dyno, "job_completed")
    assert completed["job_id"] == "Ev0LONGJOB1"


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()



def pids_of_held_jobs(proc: Proc, count: int) -> list[int]:
    """The worker process that ran each held job so far (`test_hold_started`), in order."""
    return [event["pid"] for event in wait_for_events(proc, "test_hold_started", count)]


def test_a_trickle_goes_to_one_process_and_load_fills_both(
    redis_server: RedisProcess, tmp_path: Path, fake_slack: FakeSlack
) -> None:
    """The dyno's fetch turn (worker/fetch_turn.py). Without it, BullMQ's marker, added again
    after every fetched job, woke the other process for each job and the two took turns: about
    half the jobs each even at a trickle, each process waking for every job."""
    env = {**worker_env(redis_server.url, fake_slack.base_url), "WORKER_CONCURRENCY": "2"}
    proc = WorkerProc("dyno", env, tmp_path)

    async def add_held(names: list[str], hold: float) -> None:
        queue = make_queue(Settings(redis_url=redis_server.url))
        try:
            for n, event_id in enumerate(names):
                await enqueue_mention(queue, event_id, name="held_mention",
                                      channel=f"C0HELD{n:03d}", text=f"<@U0BOT> hold={hold}")
        finally:
            await queue.close()

    try:
        wait_for_events(proc, "worker_started", 2)
        for number in range(1, 9):  # a trickle: each job done before the next arrives
            asyncio.run(add_held([f"Ev0TRICKLE{number:02d}"], hold=0))
            wait_for_events(proc, "test_hold_finished", number)
        assert len(set(pids_of_held_jobs(proc, 8))) == 1
        # Four jobs held 1.5 s at once, two slots per process: the first process fills up and
        # gives the turn to the second.
        asyncio.run(add_held([f"Ev0LOAD{n:02d}" for n in range(4)], hold=1.5))
        assert len(set(pids_of_held_jobs(proc, 12)[8:])) == 2
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=25) == 0
    finally:
        proc.stop()
