"""ACK_DURABILITY on real servers: a primary and one replica (REPLICAOF), the webhook's Enqueuer
in-process, and the web process for the start-up refusal."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness.servers import resolve_binary
from producers.ack import AckConfirmer, AckNotConfirmed, AckPolicy
from producers.enqueue import Enqueuer
from producers.jobs import SlackJob
from slackq.connection import PRODUCER, redis_client
from slackq.embedded import RedisProcess, free_port
from slackq.errors import RedisUnavailable
from slackq.settings import Settings
from tests.processes import Proc, process_env
from tests.slack_requests import BOT_TOKEN, SIGNING_SECRET


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A primary and a replica in sync with it: the replica has acknowledged the stream.

    The primary sends its first full sync at once: by default (`repl-diskless-sync-delay 5`) it
    waits 5 s for more replicas to share the transfer, a wait of every test here. A sync that
    quick leaves a moment in which the link is up but the primary holds back the stream until
    the replica's first periodic ACK (up to 1 s): a WAIT then timed out in 1 of 4 tries. So the
    pair is ready once the replica acknowledged a PUBLISH (replicated, no key).
    """
    primary = RedisProcess(tmp_path / "primary", overrides={"repl-diskless-sync-delay": "0"})
    replica = RedisProcess(tmp_path / "replica")
    try:
        primary.start()
        replica.start()
        with redis.Redis(port=replica.port, decode_responses=True) as client, \
                redis.Redis(port=primary.port, decode_responses=True) as admin:
            client.replicaof("127.0.0.1", primary.port)
            deadline = time.monotonic() + 20
            while client.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica never synced"
                time.sleep(0.05)
            admin.publish("slackq-test:replication-probe", "")
            while not acknowledged_everything(admin):
                assert time.monotonic() < deadline, "the replica never acknowledged the stream"
                time.sleep(0.05)
        yield primary, replica
    finally:
        replica.kill()
        primary.kill()


def acknowledged_everything(primary: redis.Redis) -> bool:
    info = primary.info("replication")
    replica = info.get("slave0")
    return isinstance(replica, dict) and replica.get("offset") == info["master_repl_offset"] > 0


def job(index: int) -> SlackJob:
    return SlackJob("app_mention", {"event_id": f"Ev0ACK{index:04d}"}, f"Ev0ACK{index:04d}")


def settings_for(url: str, durability: str, timeout_ms: int = 300) -> Settings:
    return Settings(redis_url=url, slack_signing_secret=SIGNING_SECRET, log_format="console",
                    ack_durability=durability, ack_timeout_ms=timeout_ms)


def wait_calls(port: int) -> int:
    with redis.Redis(port=port, decode_responses=True) as client:
        return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


async def test_replicas_1_acks_what_the_replica_has(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    primary, replica = pair
    enqueuer = Enqueuer(settings_for(primary.url, "replicas:1"))
    try:
        ids = await asyncio.gather(*(enqueuer.add(job(index)) for index in range(40)))
    finally:
        await enqueuer.close()
    with redis.Redis(port=replica.port, decode_responses=True) as client:
        assert all(client.exists(f"bull:slack-events:{job_id}") for job_id in ids)
    # One confirmation covers the jobs whose adds had returned: fewer WAITs than jobs.
    assert 1 <= wait_calls(primary.port) < 40


async def test_a_job_the_confirming_primary_lacks_is_not_confirmed(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    """The mark confirms its own server only: a job stored on another (a primary left behind
    in a partition while the confirmer moved on) gets no 200; the same round confirms the rest."""
    primary, _ = pair
    policy = AckPolicy.from_settings(settings_for(primary.url, "replicas:1"))
    confirmer = AckConfirmer(redis_client(primary.url, PRODUCER), policy)
    with redis.Redis(port=primary.port) as admin:
        admin.hset("bull:slack-events:Ev0ACK0001", "name", "app_mention")
    try:
        here, elsewhere = await asyncio.gather(confirmer.confirm("Ev0ACK0001"),
                                               confirmer.confirm("Ev0ACK0002"),
                                               return_exceptions=True)
    finally:
        await confirmer.client.aclose()
    assert here is None
    assert isinstance(elsewhere, AckNotConfirmed) and "not on the primary" in str(elsewhere)


async def test_no_confirmation_in_time_is_a_503_and_the_redelivery_stores_nothing_new(
    pair: tuple[RedisProcess, RedisProcess],
) -> None:
    primary, replica = pair
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)  # the replica stops acknowledging
    enqueuer = Enqueuer(settings_for(primary.url, "replicas:1"))
    try:
        with pytest.raises(RedisUnavailable, match=r"replicas:1 not confirmed within 300 ms"):
            await enqueuer.add(job(1))
        os.kill(replica.process.pid, signal.SIGCONT)
        assert await enqueuer.add(job(1)) == "Ev0ACK0001"  # Slack's redelivery: same job id
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
        await enqueuer.close()
    with redis.Redis(port=primary.port, decode_responses=True) as client:
        assert client.llen("bull:slack-events:wait") == 1


async def test_memory_waits_for_nothing(pair: tuple[RedisProcess, RedisProcess]) -> None:
    primary, replica = pair
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    enqueuer = Enqueuer(settings_for(primary.url, "memory"))
    try:
        assert await enqueuer.add(job(2)) == "Ev0ACK0002"
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
        await enqueuer.close()
    assert wait_calls(primary.port) == 0


def refusal(url: str, durability: str, log_dir: Path) -> str:
    """Start the web process, which must refuse to start (exit 2); return its output."""
    env = process_env(REDIS_URL=url, SLACK_SIGNING_SECRET=SIGNING_SECRET,
                      SLACK_BOT_TOKEN=BOT_TOKEN, PORT=str(free_port()),
                      ACK_DURABILITY=durability)
    web = Proc("web", env, log_dir)
    try:
        assert web.wait(30) == 2, web.output()
    finally:
        web.stop()
    return web.output()


@pytest.mark.parametrize("durability", ["fsync", "fsync+replicas:1"])
def test_fsync_modes_refuse_a_server_without_waitaof(
    redis_server: RedisProcess, tmp_path: Path, durability: str,
) -> None:
    with redis.Redis(port=redis_server.port, decode_responses=True) as client:
        version = str(client.info("server")["redis_version"])
    if tuple(int(part) for part in version.split(".")[:2]) >= (7, 2):
        pytest.skip(f"Redis {version} has WAITAOF")  # this machine's is 7.0
    output = refusal(redis_server.url, durability, tmp_path)
    assert f"ACK_DURABILITY={durability} needs WAITAOF (Redis 7.2 or later)" in output
    assert f"is Redis {version}" in output and f":{redis_server.port}/0" in output


def test_fsync_modes_refuse_a_server_without_appendfsync_always(tmp_path: Path) -> None:
    """Valkey has WAITAOF, but under `everysec` it answered before the fsync."""
    server = RedisProcess(tmp_path / "valkey", binary=resolve_binary("valkey"))
    server.start()
    try:
        output = refusal(server.url, "fsync", tmp_path)
    finally:
        server.kill()
    assert "ACK_DURABILITY=fsync needs appendfsync always" in output
    assert "has everysec" in output and f":{server.port}/0" in output
