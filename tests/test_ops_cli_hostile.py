"""The `slackq` CLI against hostile job data written raw into a real Redis (HSET / ZADD, as
another producer or an intruder could), next to real jobs failed by a real BullMQ worker; and
`clean`'s guard rails, through the installed console script (with and without a terminal)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bullmq import Queue, Worker

from slackq.connection import bullmq_connection
from slackq.embedded import RedisProcess
from tests.processes import process_env
from tests.test_ops_cli import SLACKQ, slackq, slackq_json
from tests.waiting import wait_until

ESC = "\x1b"
NOW_MS = int(time.time() * 1000)
# id -> the fields of its hash; None: in the failed set, but no hash.
HOSTILE: dict[str, dict[str, bytes] | None] = {
    "EvBadData": {b"name": b"boom", b"data": b"{not json", b"opts": b"{}",
                  b"timestamp": str(NOW_MS).encode(), b"atm": b"1",
                  b"finishedOn": str(NOW_MS).encode(), b"failedReason": b"x"},
    "EvEscName": {b"name": f"boom{ESC}[31mRED{ESC}[0m\nfake line".encode(), b"data": b"{}",
                  b"opts": b"{}", b"timestamp": str(NOW_MS).encode(), b"atm": b"1",
                  b"finishedOn": str(NOW_MS).encode(),
                  b"failedReason": f"{ESC}]0;pwned{ESC}\\ reason\r\nsecond".encode()},
    "EvBadTimes": {b"name": b"boom", b"data": b"{}", b"opts": b"{}", b"timestamp": b"yesterday",
                   b"atm": b"many", b"finishedOn": b"soon", b"failedReason": b"y"},
    f"Ev{ESC}[2JClear": {b"name": b"boom", b"data": b"{}", b"opts": b"{}",
                         b"timestamp": str(NOW_MS).encode(), b"atm": b"1",
                         b"finishedOn": str(NOW_MS).encode(), b"failedReason": b"z"},
    "EvNotUtf8": {b"name": b"boom\xff\xfe", b"data": b"\xff", b"opts": b"{}",
                  b"timestamp": str(NOW_MS).encode(), b"finishedOn": str(NOW_MS).encode()},
    "EvGone": None,
}


@pytest.fixture
async def queue(redis_server: RedisProcess) -> AsyncIterator[Queue]:
    q = Queue("slack-events", {"connection": bullmq_connection(redis_server.url)})
    yield q
    await q.close()


async def _fail(job: Any, _token: str) -> None:
    raise RuntimeError(f"boom for {job.id}")


async def fail_real_jobs(url: str, queue: Queue, ids: list[str]) -> None:
    worker = Worker("slack-events", _fail, {"connection": bullmq_connection(url),
                                            "autorun": False})
    await worker.blockingRedisConnection.getRedisVersion()
    await worker.redisConnection.getRedisVersion()
    running = asyncio.create_task(worker.run())
    try:
        for job_id in ids:
            await queue.add("boom", {"event_id": job_id}, {"jobId": job_id, "attempts": 1})

        async def all_failed() -> bool:
            return (await queue.getJobCounts("failed"))["failed"] == len(ids)

        await wait_until(all_failed)
    finally:
        await worker.close()
        await asyncio.gather(running, return_exceptions=True)


def write_hostile(url: str) -> None:
    with redis.Redis.from_url(url) as raw:
        for job_id, fields in HOSTILE.items():
            if fields is not None:
                raw.hset(f"bull:slack-events:{job_id}", mapping=fields)  # type: ignore[arg-type]
            raw.zadd("bull:slack-events:failed", {job_id: NOW_MS})


@pytest.fixture
async def hostile_queue(redis_server: RedisProcess, queue: Queue) -> Queue:
    await fail_real_jobs(redis_server.url, queue, ["EvGood1", "EvGood2"])
    write_hostile(redis_server.url)
    return queue


async def test_failed_lists_every_job_one_line_each_escaped(
    redis_server: RedisProcess, hostile_queue: Queue,
) -> None:
    done = await asyncio.to_thread(slackq, redis_server.url, "failed")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 + len(HOSTILE), done.stdout  # no name or reason added a line
    assert ESC not in done.stdout and "\r" not in done.stdout
    by_id = {line.split("  ", 1)[0]: line for line in lines}
    for good in ("EvGood1", "EvGood2"):
        assert f"boom for {good}" in by_id[good] and "unreadable" not in by_id[good]
    assert "[unreadable job: data is not JSON]" in by_id["EvBadData"]
    assert "boom\\x1b[31mRED\\x1b[0m\\nfake line" in by_id["EvEscName"]
    assert "\\x1b]0;pwned" in by_id["EvEscName"] and "unreadable" not in by_id["EvEscName"]
    assert ("attemptsMade is not a number; finishedOn is not a number; "
            "timestamp is not a number") in by_id["EvBadTimes"]
    assert "unreadable" not in by_id["Ev\\x1b[2JClear"]
    assert "data is not JSON" in by_id["EvNotUtf8"]
    assert "the job's hash is missing" in by_id["EvGone"]

    rows = {row["id"]: row for row in await asyncio.to_thread(
        slackq_json, redis_server.url, "failed")}
    assert len(rows) == 2 + len(HOSTILE)
    assert rows["EvGood1"]["problems"] == [] and rows["EvGood1"]["attempts"] == 1
    assert rows["EvEscName"]["name"] == f"boom{ESC}[31mRED{ESC}[0m\nfake line"  # JSON escapes it
    assert rows["EvBadTimes"]["failed_at"] is None and rows["EvBadTimes"]["attempts"] is None


async def test_retry_by_name_retries_the_readable_and_names_the_rest(
    redis_server: RedisProcess, hostile_queue: Queue,
) -> None:
    done = await asyncio.to_thread(slackq, redis_server.url, "retry", "--name", "boom")
    assert done.returncode == 0, done.stderr
    assert ESC not in done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].startswith("retried ")
    assert sorted(lines[0].removeprefix("retried ").split(", ")) == [
        "EvGood1", "EvGood2", "Ev\\x1b[2JClear"]
    assert sorted(lines[1:]) == [
        "not retried EvBadData: data is not JSON",
        "not retried EvBadTimes: attemptsMade is not a number; finishedOn is not a number; "
        "timestamp is not a number",
    ]
    assert await hostile_queue.getJobCounts("wait", "failed") == {
        "wait": 3, "failed": len(HOSTILE) + 2 - 3}
    # Attempts are kept (docs/operating.md): the retried job has used its one attempt.
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as raw:
        assert raw.hget("bull:slack-events:EvGood1", "atm") == "1"


def run_cli(url: str, *args: str, answer: str | None = None) -> tuple[int, str]:
    """The console script; with `answer`, stdin is a terminal that types it."""
    env = process_env(REDIS_URL=url)
    if answer is None:
        done = subprocess.run([SLACKQ, *args], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30)
        return done.returncode, done.stdout + done.stderr
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen([SLACKQ, *args], env=env, stdin=secondary,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        os.write(primary, answer.encode() + b"\n")
        out, _ = proc.communicate(timeout=30)
        return proc.returncode, out
    finally:
        os.close(primary)
        os.close(secondary)


async def test_clean_refuses_a_zero_age_and_asks_before_removing_waiting_jobs(
    redis_server: RedisProcess, queue: Queue,
) -> None:
    for index in range(3):  # an hour old: any --age up to 3600 covers them
        await queue.add("message", {}, {"jobId": f"EvW{index}", "timestamp": NOW_MS - 3_600_000})
    url = redis_server.url

    for age in ("0", "-5"):
        code, out = await asyncio.to_thread(run_cli, url, "clean", "--state", "completed",
                                            "--age", age)
        assert code == 2 and "must be a positive number" in out, out

    code, out = await asyncio.to_thread(run_cli, url, "clean", "--state", "wait", "--age", "60")
    assert code == 2 and "nothing removed" in out and "--yes" in out, out
    code, out = await asyncio.to_thread(run_cli, url, "clean", "--state", "wait", "--age", "60",
                                        answer="n")
    assert code == 1 and "wait holds 3 job(s)" in out and "nothing removed" in out, out
    assert (await queue.getJobCounts("wait"))["wait"] == 3

    code, out = await asyncio.to_thread(run_cli, url, "clean", "--state", "wait", "--age", "60",
                                        "--limit", "1", answer="y")
    assert code == 0 and "removed 1 wait job(s)" in out, out
    code, out = await asyncio.to_thread(run_cli, url, "clean", "--state", "wait", "--age", "60",
                                        "--yes", "--json")
    assert code == 0, out
    assert len(json.loads(out)["removed"]) == 2
    assert (await queue.getJobCounts("wait"))["wait"] == 0


def test_retry_help_says_what_happens_to_attempts(tmp_path: Path) -> None:
    code, out = run_cli("redis://127.0.0.1:1/0", "retry", "--help")
    assert code == 0
    assert "Attempts are not reset" in " ".join(out.split())
