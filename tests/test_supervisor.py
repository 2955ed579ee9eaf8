"""The worker dyno's supervisor, with real processes: the Procfile's `worker` line, a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bullmq import Queue

from harness.slack_standin import FakeSlack
from slackq.contract import job_options
from slackq.embedded import RedisProcess
from slackq.settings import Settings, usable_cpus
from tests.processes import Proc, process_env
from tests.slack_requests import BOT_TOKEN, app_mention_envelope
from worker.supervisor import RestartPolicy, clean_exit


def log_events(proc: Proc, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of `proc` (supervisor and children share its output) named `name`."""
    events = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name:
                events.append(entry)
    return events


def wait_until(proc: Proc, what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
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
        assert proc.wait(timeout=25) == 2
    finally:
        proc.stop()
        evicting.kill()
    assert log_events(proc, "worker_process_restarting") == []
    assert "maxmemory-policy" in proc.output()


def test_restart_backoff_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(base_seconds=0.5, cap_seconds=4.0)
    assert [policy.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_child_stopped_by_the_forwarded_signal_counts_as_clean() -> None:
    assert clean_exit(0) and clean_exit(-signal.SIGTERM) and clean_exit(-signal.SIGINT)
    assert not clean_exit(1) and not clean_exit(-signal.SIGKILL)


def test_worker_processes_defaults_to_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_PROCESSES", raising=False)
    assert Settings().worker_processes == usable_cpus() >= 1
    monkeypatch.setenv("WORKER_PROCESSES", "3")
    assert Settings().worker_processes == 3
