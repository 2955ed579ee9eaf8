"""Behind Sentinel, with real processes: a primary, two replicas and three sentinels
(harness.topology), the Procfile's web and worker on a `redis+sentinel://` URL, and the Slack
stand-in. The failover test SIGKILLs the primary while signed events flow and checks that every
event answered 200 is replied to, with `ACK_DURABILITY=replicas:1`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redis.exceptions import RedisError

from harness.slack_standin import FakeSlack
from harness.topology import SentinelTopology
from slackq.connection import BLOCKING, PRODUCER, command_retry, redis_client
from tests.security_support import procfile_stack, run_cli
from tests.slack_requests import app_mention_envelope, encode, signed_headers

# Pacing would spread the replies over minutes; this test is about Redis, not Slack's limits.
NO_PACING = {"WORKER_RATE_PER_CHANNEL": "0", "WORKER_RATE_PER_TEAM": "0"}


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    topo = SentinelTopology(tmp_path / "topology").start()
    yield topo
    topo.stop()


def post(base: str, index: int, client: httpx.Client) -> int:
    envelope = app_mention_envelope(f"Ev0HA{index:06d}", ts=f"1700000000.{index:06d}")
    body = encode(envelope)
    try:
        return client.post(f"{base}/slack/events", content=body, headers=signed_headers(body),
                           timeout=5).status_code
    except httpx.HTTPError:
        return 0


def replied_ts(fake_slack: FakeSlack) -> list[str]:
    return [str(call.args.get("thread_ts")) for call in fake_slack.calls_to("chat.postMessage")]


def test_web_worker_and_status_on_a_sentinel_url(
    topology: SentinelTopology, fake_slack: FakeSlack, tmp_path: Path,
) -> None:
    with procfile_stack(topology.url, fake_slack, tmp_path, **NO_PACING) as (base, _web, _w):
        with httpx.Client() as client:
            assert post(base, 1, client) == 200
            assert client.get(f"{base}/health/redis", timeout=5).json()["healthy"] is True
        [call] = fake_slack.wait_for_calls("chat.postMessage", 1)
        assert call.args["thread_ts"] == "1700000000.000001"
    code, output = run_cli(topology.url, "status", "--json")
    assert code == 0, output
    assert json.loads(output)["counts"]["completed"] == 1
    code, output = run_cli(topology.url, "status")
    assert code == 0 and f"on redis+sentinel://127.0.0.1:{topology.watchers[0].port}" in output
    code, output = run_cli(topology.url, "doctor", "--json")
    checks = {check["name"]: check["level"] for check in json.loads(output)["checks"]}
    assert code == 1 and checks["eviction policy"] == "ok"  # the test nodes have no password
    assert checks["authentication"] == "FAIL"


@dataclass
class Traffic:
    """Signed events at a modest rate from a thread; what each got, and when."""

    base: str
    rate: float = 25.0
    sent: list[tuple[int, float, int]] = field(default_factory=list)  # index, time, status
    seconds: list[float] = field(default_factory=list)  # each request's, in order
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        index = 0
        with httpx.Client() as client:
            while not self.stop.is_set():
                index += 1
                at = time.monotonic()
                status = post(self.base, index, client)
                self.sent.append((index, at, status))
                self.seconds.append(time.monotonic() - at)
                self.stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - at)))

    def acked(self) -> list[int]:
        return [index for index, _, status in self.sent if status == 200]

    def unavailable_seconds(self) -> float:
        """The longest time between two requests answered 200 (sent times)."""
        times = [at for _, at, status in self.sent if status == 200]
        return max((later - earlier for earlier, later in itertools.pairwise(times)),
                   default=0.0)

    def ack_p99_ms(self) -> float:
        seconds = sorted(s for (_, _, status), s in zip(self.sent, self.seconds, strict=False)
                         if status == 200)
        return round(seconds[int(0.99 * (len(seconds) - 1))] * 1000, 1)


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.mark.parametrize("durability", ["replicas:1", "memory"])
def test_events_keep_flowing_through_a_failover(
    topology: SentinelTopology, fake_slack: FakeSlack, tmp_path: Path, durability: str,
) -> None:
    """`replicas:1` loses no acknowledged event; `memory` may (async replication), so for it
    the test measures without asserting zero loss."""
    env = {**NO_PACING, "ACK_DURABILITY": durability, "WORKER_PROCESSES": "2"}
    with procfile_stack(topology.url, fake_slack, tmp_path, **env) as (base, web, worker):
        traffic = Traffic(base)
        sender = threading.Thread(target=traffic.run, daemon=True)
        sender.start()
        try:
            wait_until(lambda: len(traffic.acked()) >= 20, 30, "20 events stored before the kill")
            old = topology.kill_primary()
            killed_at, killed_wall = time.monotonic(), time.time()
            new_port = topology.wait_failover(old.port)
            # Events keep being stored after the failover, by the same web process.
            wait_until(lambda: sum(1 for _, at, status in traffic.sent
                                   if status == 200 and at > killed_at) >= 40, 60,
                       f"40 events stored after the kill:\n{web.output()[-3000:]}")
        finally:
            traffic.stop.set()
            sender.join(10)
        acked = traffic.acked()
        expected = {f"1700000000.{index:06d}" for index in acked}
        if durability == "memory":  # wait for the replies there will be: a later event's
            wait_until(lambda: f"1700000000.{acked[-1]:06d}" in replied_ts(fake_slack), 60,
                       f"a reply to the last acked event:\n{worker.output()[-3000:]}")
        else:
            wait_until(lambda: expected <= set(replied_ts(fake_slack)), 60,
                       f"a reply to every acked event:\n{worker.output()[-3000:]}")
        replies = replied_ts(fake_slack)
        assert web.popen.poll() is None and worker.popen.poll() is None
    first_stored = min(at for _, at, status in traffic.sent if status == 200 and at > killed_at)
    first_reply = first_completed_after(fake_slack, killed_wall)
    print(json.dumps({
        "ack_durability": durability, "acked": len(acked), "lost": len(expected - set(replies)),
        "duplicates": len(replies) - len(set(replies)),
        "not_acked": sum(1 for _, _, status in traffic.sent if status != 200),
        "new_primary_port": new_port,
        "kill_to_first_stored_s": round(first_stored - killed_at, 3),
        "kill_to_first_completed_s": round(first_reply - killed_wall, 3),
        "unavailable_s": round(traffic.unavailable_seconds(), 3),
        "ack_p99_ms": traffic.ack_p99_ms(),
    }))


def first_completed_after(fake_slack: FakeSlack, since: float) -> float:
    """When (wall clock) the first reply after `since` reached the stand-in."""
    times = [call.at for call in fake_slack.calls_to("chat.postMessage")
             if call.at > since]
    return min(times)


async def test_a_blocking_wait_on_the_dead_primary_finds_the_new_one(
    topology: SentinelTopology,
) -> None:
    """The worker's BZPOPMIN (its client and command retry) outlives a SIGKILLed primary: its
    retries reconnect through the sentinels, not to the dead primary's address."""
    waiter = redis_client(topology.url, BLOCKING.pooled(2))
    waiter.set_retry(command_retry(20_000).build())
    producer = redis_client(topology.url, PRODUCER)
    try:
        assert await waiter.ping()
        waiting = asyncio.create_task(waiter.bzpopmin("marker", 5))
        await asyncio.sleep(0)  # let it send the BZPOPMIN (its reply is what matters)
        old = topology.kill_primary()
        await asyncio.to_thread(topology.wait_failover, old.port)
        while not waiting.done():  # the marker a producer's add would leave
            with contextlib.suppress(RedisError):
                await producer.zadd("marker", {"0": 0})
            await asyncio.wait({waiting}, timeout=0.2)
        assert waiting.result() is not None and waiting.result()[0] == "marker"
    finally:
        await waiter.aclose()
        await producer.aclose()
