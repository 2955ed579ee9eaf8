"""Token rotation under load: 20 concurrent jobs of one rotating team across 2 worker processes
(real processes, the least-privilege ACL user, real databases). One refresh per expiry; a refresh
token is never sent twice (the Slack stand-in refuses and records a reuse)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
import redis
from bullmq import Queue

from harness.slack_standin import FakeSlack, Grant
from slackq.embedded import RedisProcess
from tests.databases import db_url, pg_database, token_key  # noqa: F401 - fixtures
from tests.processes import Proc, process_env
from tests.test_security_acl import acl_redis, user_url  # noqa: F401 - fixture
from tests.waiting import wait_until
from tests.worker_helpers import JOBS
from tests.workspace_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    install,
    mention,
    multi_env,
    multi_settings,
)

pytestmark = pytest.mark.slow
JOBS_PER_ROUND = 20
MARGIN = 60  # SLACK_TOKEN_REFRESH_SECONDS
# The first refreshed token is due again 8 s after the refresh: the first round's 20 jobs must
# all have taken it before (they took ~1 s in CI runs: a refresh in flight, then one post each).
SECOND_LIFE = 68


async def run_round(queue: Queue, admin: redis.Redis, first: int) -> None:
    for i in range(first, first + JOBS_PER_ROUND):
        envelope = mention(f"Ev0ROT{i:03}", "T0ROT", ts=f"1700000{i:03}.000100")
        await queue.add("app_mention", envelope, JOBS.for_job(envelope["event_id"]))
    await wait_until(lambda: admin.zcard("bull:slack-events:completed") >= first
                     + JOBS_PER_ROUND, 60, f"{first + JOBS_PER_ROUND} jobs completed")


async def test_one_refresh_per_expiry_across_two_worker_processes(
        acl_redis: tuple[RedisProcess, redis.Redis],  # noqa: F811 - fixture
        fake_slack: FakeSlack, db_url: str, tmp_path: Path) -> None:  # noqa: F811 - fixture
    server, admin = acl_redis
    key = token_key()
    fake_slack.client_id, fake_slack.client_secret = CLIENT_ID, CLIENT_SECRET
    fake_slack.oauth_delay = 0.5  # every job of both processes meets the refresh in flight
    fake_slack.refresh_expires_in = SECOND_LIFE
    first_refresh = fake_slack.grant_refresh_token(Grant(team_id="T0ROT"))
    old_token = "xoxe.xoxb-1-T0ROT-old-not-real"
    settings = multi_settings(user_url(server), fake_slack.base_url, db_url, key)
    await install(settings, team="T0ROT", token=old_token, refresh_token=first_refresh,
                  expires_in=30)  # due at once: within the margin
    env = process_env(REDIS_URL=user_url(server), SLACK_API_URL=fake_slack.base_url,
                      SLACK_TOKEN_REFRESH_SECONDS=str(MARGIN), WORKER_CONCURRENCY="10",
                      WORKER_RATE_PER_CHANNEL="0", WORKER_RATE_PER_TEAM="0",
                      **multi_env(db_url, key))
    workers = [Proc(f"worker-{n}", env, tmp_path, [sys.executable, "-m", "worker"])
               for n in (1, 2)]
    queue = Queue("slack-events", {"connection": user_url(server), "prefix": "bull"})
    try:
        for proc in workers:
            await asyncio.to_thread(proc.wait_for_output, "worker_started", 30)
        await run_round(queue, admin, 0)
        [refresh_1] = fake_slack.calls_to("oauth.v2.access")
        first_new = fake_slack.issued_tokens[0]
        assert set(fake_slack.tokens_used("chat.postMessage")) == {first_new}
        # Each process held 10 jobs while the refresh was in flight: both waited, neither
        # refreshed again.
        assert all('"job_completed"' in proc.output() for proc in workers)

        fake_slack.refresh_expires_in = 43_200
        await wait_until(lambda: time.time() > refresh_1.at + SECOND_LIFE - MARGIN + 1, 30,
                         "the refreshed token is due")
        await run_round(queue, admin, JOBS_PER_ROUND)
    finally:
        await queue.close()
        for proc in workers:
            proc.stop()
    refreshes = fake_slack.calls_to("oauth.v2.access")
    assert len(refreshes) == 2  # one per expiry
    assert refreshes[0].args["refresh_token"] == first_refresh
    assert len({c.args["refresh_token"] for c in refreshes}) == 2
    assert fake_slack.reused_refresh_tokens == []
    second_new = fake_slack.issued_tokens[1]
    used = fake_slack.tokens_used("chat.postMessage")
    assert used[JOBS_PER_ROUND:] == [second_new] * JOBS_PER_ROUND
    assert admin.execute_command("ACL", "LOG") == []  # the lock stayed inside bull:*
    logs = "".join(proc.output() for proc in workers)
    for secret in (old_token, first_refresh, *fake_slack.issued_tokens, CLIENT_SECRET, key):
        assert secret not in logs
    assert logs.count('"token_refreshed"') == 2
