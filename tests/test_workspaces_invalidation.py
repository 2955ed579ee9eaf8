"""An uninstall handled by one worker process stops the other worker process at once, although
it holds the token in its cache (real processes, real Redis pub/sub, a SQLite store: the feed is
the same on every backend); the feed forgets everything when it may have missed a message."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from bullmq import Queue

from harness.slack_standin import FakeSlack
from slackq.connection import command_profile
from slackq.connection import redis_client as make_client
from slackq.embedded import RedisProcess
from tests.databases import token_key
from tests.processes import Proc, process_env
from tests.waiting import wait_until
from tests.worker_helpers import JOBS
from tests.workspace_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    Jobs,
    delete_behind_slackq,
    events,
    handled,
    install,
    lifecycle_event,
    multi_env,
    multi_settings,
)
from worker.installation_changes import InstallationChanges, Key, channel_name

TOKEN_A, TOKEN_B = "xoxb-A-cached-not-real", "xoxb-B-cached-not-real"


@pytest.fixture
async def workers(redis_server: RedisProcess, fake_slack: FakeSlack,
                  tmp_path: Path) -> AsyncIterator[tuple[list[Proc], str]]:
    fake_slack.client_id, fake_slack.client_secret = CLIENT_ID, CLIENT_SECRET
    database, key = f"sqlite:///{tmp_path / 'store.db'}", token_key()
    settings = multi_settings(redis_server.url, fake_slack.base_url, database, key)
    await install(settings, team="T0A", token=TOKEN_A)
    await install(settings, team="T0B", token=TOKEN_B)
    # A cache longer than the test: without the feed, a stale token would be used throughout.
    env = process_env(REDIS_URL=redis_server.url, SLACK_API_URL=fake_slack.base_url,
                      SLACKQ_INSTALLATION_CACHE_SECONDS="600", WORKER_CONCURRENCY="1",
                      WORKER_RATE_PER_CHANNEL="0", WORKER_RATE_PER_TEAM="0",
                      **multi_env(database, key))
    procs = [Proc(f"worker-{n}", env, tmp_path, [sys.executable, "-m", "worker"]) for n in (1, 2)]
    try:
        for proc in procs:
            await asyncio.to_thread(proc.wait_for_output, "worker_started", 30)
        yield procs, database
    finally:
        for proc in procs:
            proc.stop()


@pytest.mark.slow
async def test_an_uninstall_in_one_process_empties_the_others_cache(
        workers: tuple[list[Proc], str], redis_server: RedisProcess, redis_client: redis.Redis,
        fake_slack: FakeSlack) -> None:
    procs, database = workers
    channel = channel_name("bull")
    await wait_until(lambda: redis_client.pubsub_numsub(channel) == [(channel, 2)], 20,
                     "both processes listen")
    queue = Queue("slack-events", {"connection": redis_server.url, "prefix": "bull"})
    jobs = Jobs(queue, redis_client)
    try:
        await jobs.until_each_handled(procs, "Ev0WA", "T0A")  # both hold T0A's token
        await jobs.until_each_handled(procs, "Ev0WB", "T0B")

        # Control: a team deleted behind slackq's back (no announcement) is still served from
        # each process's cache, with its old token. So the cache is warm in both processes.
        await delete_behind_slackq(
            multi_settings("redis://unused", "http://unused", database, token_key()), "T0B")
        await jobs.until_each_handled(procs, "Ev0CB", "T0B")

        uninstall = lifecycle_event("Ev0UNA", "T0A", {"type": "app_uninstalled"})
        await queue.add("app_uninstalled", uninstall, JOBS.for_job("Ev0UNA"))
        await jobs.ended(["Ev0UNA"])
        assert redis_client.zscore("bull:slack-events:completed", "Ev0UNA") is not None
        [uninstaller] = [proc for proc in procs if events(proc, "slack_app_uninstalled")]
        used_before = fake_slack.tokens_used("chat.postMessage").count(TOKEN_A)
        await jobs.until_each_handled(procs, "Ev0AA", "T0A", "job_failed_permanently")
    finally:
        await queue.close()
    bystander = next(proc for proc in procs if proc is not uninstaller)
    assert handled(bystander, "Ev0AA", "job_failed_permanently")  # the cache held T0A
    assert not any(job_id.startswith("Ev0AA") for proc in procs for job_id in
                   handled(proc, "Ev0AA"))
    for line in events(bystander, "job_failed_permanently"):
        assert str(line["reason"]).startswith("no_installation")
    assert fake_slack.tokens_used("chat.postMessage").count(TOKEN_A) == used_before
    logs = "".join(proc.output() for proc in procs)
    assert TOKEN_A not in logs and TOKEN_B not in logs and "xoxb-" not in logs


async def test_the_feed_forgets_every_token_when_it_may_have_missed_a_change(
        redis_server: RedisProcess, redis_client: redis.Redis) -> None:
    client = make_client(redis_server.url, command_profile(30_000))
    forgotten: list[Key] = []
    cleared: list[bool] = []
    feed = InstallationChanges(client, "bull", forget=forgotten.append,
                               forget_all=lambda: cleared.append(True))
    channel = channel_name("bull")

    def listening() -> bool:
        return bool(redis_client.pubsub_numsub(channel) == [(channel, 1)])

    feed.start()
    try:
        await wait_until(listening, 10, "the feed listens")
        await feed.announce(("E1", None))
        await wait_until(lambda: forgotten == [("E1", None)], 10, "the change arrived")
        redis_client.publish(channel, "not a key")  # ignored, and the feed goes on
        # A broken connection: whatever was published meanwhile is lost to this process.
        before = len(cleared)
        redis_client.client_kill_filter(_type="pubsub")
        await wait_until(lambda: len(cleared) > before and listening(), 10,
                         "the cache emptied, the feed listening again")
        await feed.announce((None, "T1"))
        await wait_until(lambda: forgotten[-1:] == [(None, "T1")], 10, "a change after it")
    finally:
        await feed.close()
        await client.aclose()
    assert forgotten == [("E1", None), (None, "T1")]


async def test_without_channel_rights_the_feed_stands_down_and_tokens_live_their_cache_time(
        redis_server: RedisProcess, redis_client: redis.Redis) -> None:
    # An ACL user made with the rule of an older docs/security.md (no `&bull:*`).
    redis_client.execute_command("ACL", "SETUSER", "old", "on", ">old-pw", "~*",
                                 "resetchannels", "+@all")
    url = redis_server.url.replace("redis://", "redis://old:old-pw@", 1)
    client = make_client(url, command_profile(30_000))
    feed = InstallationChanges(client, "bull", forget=lambda key: None, forget_all=lambda: None)
    feed.start()
    try:
        assert feed._task is not None
        await wait_until(feed._task.done, 10, "the feed stood down")
        assert feed._task.exception() is None
        await feed.announce(("E1", None))  # refused: logged, not raised
    finally:
        await feed.close()
        await client.aclose()
    denied = {entry["object"] for entry in redis_client.execute_command("ACL", "LOG")}
    assert denied == {channel_name("bull")}
