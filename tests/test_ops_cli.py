"""`slackq status|doctor|failed|retry|clean` as an operator runs them: the console script, as a
subprocess, against real redis-server processes and a real BullMQ worker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bullmq import Queue, Worker

from slackq.cli import main
from slackq.connection import bullmq_connection
from slackq.doctor import Level, RedisFacts, evaluate
from slackq.embedded import RedisProcess
from tests.processes import process_env
from tests.waiting import wait_until

SLACKQ = str(Path(sys.executable).parent / "slackq")


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def slackq(url: str, *args: str) -> Done:
    """Run the CLI in this process (fast); `test_console_script` runs the installed script."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REDIS_URL", url)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    return Done(code, out.getvalue(), err.getvalue())


def slackq_json(url: str, *args: str) -> Any:
    done = slackq(url, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def doctor(url: str) -> tuple[int, dict[str, str]]:
    done = slackq(url, "doctor", "--json")
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    return done.returncode, {c["name"]: c["level"] for c in report["checks"]}


def start(tmp_path: Path, **overrides: str) -> RedisProcess:
    server = RedisProcess(data_dir=tmp_path / "redis", overrides=overrides)
    server.start()
    return server


def test_doctor_on_the_project_redis_conf_fails_only_on_auth(redis_server: RedisProcess) -> None:
    """Through the installed console script, as an operator runs it."""
    done = subprocess.run([SLACKQ, "doctor", "--json"], env=process_env(REDIS_URL=redis_server.url),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    levels = {c["name"]: c["level"] for c in json.loads(done.stdout)["checks"]}
    assert {name for name, level in levels.items() if level == "FAIL"} == {"authentication"}


def test_doctor_passes_with_a_password(tmp_path: Path) -> None:
    server = start(tmp_path, requirepass="doctor-pass-123")
    try:
        code, levels = doctor(f"redis://:doctor-pass-123@127.0.0.1:{server.port}/0")
        assert code == 0, levels
        assert set(levels.values()) == {"ok"}
    finally:
        server.kill()


def test_doctor_names_every_problem_of_an_unsafe_redis(tmp_path: Path) -> None:
    server = start(tmp_path, **{"maxmemory-policy": "allkeys-lru", "appendonly": "no",
                                "appendfsync": "no", "maxmemory": "0"})
    try:
        done = slackq(server.url, "doctor")
        assert done.returncode == 1
        for reason in ("maxmemory-policy allkeys-lru", "appendonly no", "appendfsync no",
                       "maxmemory 0", "anyone who reaches the port", "5 problem(s)"):
            assert reason in done.stdout, done.stdout
    finally:
        server.kill()


def facts(**changes: Any) -> RedisFacts:
    safe = dict(version="7.0.15", eviction_policy="noeviction", maxmemory=1 << 28,
                used_memory=1 << 20, aof_enabled=True, aof_last_write_status="ok",
                aof_delayed_fsync=0, appendfsync="everysec", auth_required=True)
    return RedisFacts(**{**safe, **changes})


@pytest.mark.parametrize(("changes", "failing"), [
    ({}, set()),
    ({"version": "6.0.16"}, {"version"}),
    ({"version": "7.2.4"}, set()),
    ({"aof_last_write_status": "err"}, {"last AOF write"}),
    ({"appendfsync": "always"}, set()),
    ({"eviction_policy": "volatile-lru", "auth_required": False},
     {"eviction policy", "authentication"}),
])
def test_checks(changes: dict[str, Any], failing: set[str]) -> None:
    assert {c.name for c in evaluate(facts(**changes)) if c.level is Level.FAIL} == failing


def test_unknown_fsync_policy_warns_but_does_not_fail() -> None:
    [check] = [c for c in evaluate(facts(appendfsync=None)) if c.name == "fsync policy"]
    assert check.level is Level.WARN


def test_unreachable_or_refused_redis_is_one_line_exit_2(tmp_path: Path) -> None:
    server = start(tmp_path, requirepass="the-real-password")
    try:
        for url in (f"redis://:not-the-password@127.0.0.1:{server.port}/0",
                    f"redis://127.0.0.1:{server.port}/0"):
            done = slackq(url, "status")
            assert done.returncode == 2
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
            assert "Traceback" not in done.stderr and "not-the-password" not in done.stderr
            assert f"127.0.0.1:{server.port}" in done.stderr
    finally:
        server.kill()


@pytest.fixture
async def queue(redis_server: RedisProcess) -> AsyncIterator[Queue]:
    q = Queue("slack-events", {"connection": bullmq_connection(redis_server.url)})
    yield q
    await q.close()


async def test_status_failed_retry_clean(redis_server: RedisProcess, queue: Queue) -> None:
    async def process(job: Any, _token: str) -> str:
        if job.name == "boom":
            raise RuntimeError(f"boom for {job.id}")
        return "ok"

    worker = Worker("slack-events", process,
                    {"connection": bullmq_connection(redis_server.url), "autorun": False})
    await worker.blockingRedisConnection.getRedisVersion()
    await worker.redisConnection.getRedisVersion()
    running = asyncio.create_task(worker.run())
    try:
        for job_id, name in (("EvA", "boom"), ("EvB", "boom"), ("EvC", "app_mention"),
                             ("EvD", "other")):
            await queue.add(name, {"event_id": job_id}, {"jobId": job_id, "attempts": 1})

        async def settled() -> bool:
            counts = await queue.getJobCounts("failed", "completed")
            return counts == {"failed": 2, "completed": 2}

        await wait_until(settled)
        status = await asyncio.to_thread(slackq_json, redis_server.url, "status")
        assert status["counts"]["failed"] == 2 and status["counts"]["completed"] == 2
        assert status["counts"]["wait"] == 0
        # One Python BullMQ worker: its blocking and its command connection, both named.
        assert status["worker_connections"] == 2
        assert status["redis"]["eviction_policy"] == "noeviction"
        assert status["redis"]["aof_enabled"] is True
        assert status["redis"]["appendfsync"] == "everysec"
    finally:
        await worker.close()
        await asyncio.gather(running, return_exceptions=True)

    failed = await asyncio.to_thread(slackq_json, redis_server.url, "failed")
    assert sorted((row["id"], row["name"], row["reason"]) for row in failed) == [
        ("EvA", "boom", "boom for EvA"), ("EvB", "boom", "boom for EvB")]

    # No worker runs now: a retried job waits, visible in the counts.
    nothing = await asyncio.to_thread(slackq_json, redis_server.url, "retry", "--name", "other")
    assert nothing == {"retried": [], "skipped": []}
    await asyncio.to_thread(slackq_json, redis_server.url, "retry", "--name", "boom")
    assert await queue.getJobCounts("failed", "wait") == {"failed": 0, "wait": 2}

    removed: list[str] = []

    async def cleaned() -> bool:  # --age is at least 1 s: the jobs completed just now
        result = await asyncio.to_thread(
            slackq_json, redis_server.url, "clean", "--state", "completed", "--age", "1")
        removed.extend(result["removed"])
        return len(removed) == 2

    await wait_until(cleaned, within=10, what="clean removes the completed jobs")
    assert sorted(removed) == ["EvC", "EvD"]
    assert await queue.getJobCounts("completed") == {"completed": 0}
    kept = await asyncio.to_thread(
        slackq_json, redis_server.url, "clean", "--state", "wait", "--age", "3600", "--yes")
    assert kept == {"removed": []}


async def test_retry_all(redis_server: RedisProcess, queue: Queue) -> None:
    worker = Worker("slack-events", _always_fail,
                    {"connection": bullmq_connection(redis_server.url), "autorun": False})
    await worker.blockingRedisConnection.getRedisVersion()
    await worker.redisConnection.getRedisVersion()
    running = asyncio.create_task(worker.run())
    try:
        for index in range(3):
            await queue.add("message", {}, {"jobId": f"EvR{index}", "attempts": 1})

        async def all_failed() -> bool:
            return (await queue.getJobCounts("failed"))["failed"] == 3

        await wait_until(all_failed)
    finally:
        await worker.close()
        await asyncio.gather(running, return_exceptions=True)
    result = await asyncio.to_thread(slackq_json, redis_server.url, "retry", "--all")
    assert result == {"retried": ["3 job(s)"], "skipped": []}
    assert await queue.getJobCounts("failed", "wait") == {"failed": 0, "wait": 3}


async def _always_fail(_job: Any, _token: str) -> None:
    raise ValueError("nope")
